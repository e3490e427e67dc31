"""Stage 2 at 1920 steps on the kept students of runs/hc-hubert-mini (SKILL, seeds 0-2): copies of calibrate/,
distill_prune/, finalize/ and job.json (stage2_steps 1920), the pipeline resumed from final_distill."""

import json
import shutil
import sys
from pathlib import Path

from core import pipeline
from core.spec import CompressionSpec

for seed in map(int, sys.argv[1:]):
    src = Path(f"runs/hc-hubert-mini/runs/skill-target_speedup4-seed{seed}")
    wd = Path(f"runs/s2x2/skill-seed{seed}")
    wd.mkdir(parents=True, exist_ok=True)
    for stage in ("calibrate", "distill_prune", "finalize"):
        if not (wd / stage).exists():
            shutil.copytree(src / stage, wd / stage)
    job = json.loads((src / "job.json").read_text())
    job["spec"]["stage2_steps"] = 1920
    (wd / "job.json").write_text(json.dumps(job))
    spec = CompressionSpec(**job["spec"])
    pipeline.run(spec, job["teacher"], job["audio"], wd)
    print("done", seed, flush=True)

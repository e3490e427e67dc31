"""Stage 2 again at STEPS steps on the kept students of a compare run (calibrate/, distill_prune/, finalize/
and job.json copied, stage2_steps changed), the pipeline resumed from the final distillation.
Usage: python stage2_resume.py COMPARE_RUNS_DIR METHOD OUT_DIR STEPS SEED..."""

import json
import shutil
import sys
from pathlib import Path

from core import pipeline
from core.spec import CompressionSpec

runs, method, out, steps = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
for seed in map(int, sys.argv[5:]):
    src = runs / f"{method}-target_speedup4-seed{seed}"
    wd = out / f"{method}-seed{seed}"
    wd.mkdir(parents=True, exist_ok=True)
    for stage in ("calibrate", "distill_prune", "finalize"):
        if not (wd / stage).exists():
            shutil.copytree(src / stage, wd / stage)
    job = json.loads((src / "job.json").read_text())
    job["spec"]["stage2_steps"] = steps
    (wd / "job.json").write_text(json.dumps(job))
    spec = CompressionSpec(**job["spec"])
    pipeline.run(spec, job["teacher"], job["audio"], wd)
    print("done", seed, flush=True)

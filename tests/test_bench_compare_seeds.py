"""bench.compare_seeds: a comparison's students paired by seed with the teacher and a reference method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.compare_seeds import render, seed_figures


def _run(group: str, seed: int, per: float, sid: float, source: str) -> dict[str, Any]:
    return {
        "group": group,
        "seed": seed,
        "params": 2e6,
        "source": source,
        "pr": {"per": per},
        "sid": {"accuracy": sid},
    }


def test_students_are_paired_by_seed_and_read_their_landing(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    runs = [_run("teacher", s, per, sid, "teachers/t") for s, per, sid in ((0, 0.30, 0.80), (1, 0.20, 0.60))]
    groups = {  # compare names a budget's groups "method [budget]"
        "skill [target_speedup=4]": ((0.33, 0.75), (0.21, 0.62)),
        "dphubert [target_speedup=4]": ((0.34, 0.70), (0.25, 0.61)),
    }
    for group, figures in groups.items():
        for seed, (per, sid) in enumerate(figures):
            student = out / "runs" / f"{group.split()[0]}-seed{seed}" / "student"
            student.mkdir(parents=True)
            report = {
                "finalize": {"landing": {"measured": {"measured_speedup": 4.2 + seed}}},
                "latency": {"predicted_speedup": 5.0},
                "speed": {"cpu_1_thread": {"speedup": 4.0 + seed}},
            }
            (student / "report.json").write_text(json.dumps(report))
            # recorded relative to where compare ran: found again under the comparison's own directory
            runs.append(_run(group, seed, per, sid, f"elsewhere/runs/{group.split()[0]}-seed{seed}/student"))
    out.mkdir(exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"runs": runs}))

    figures = seed_figures(out)
    assert (
        figures["skill [target_speedup=4]"][1]["landed"] == 5.2
        and figures["skill [target_speedup=4]"][0]["speedup"] == 4.0
    )
    assert figures["teacher"][0]["landed"] is None
    text = render(out, reference="dphubert")  # the method names its group
    # skill less the teacher, seed by seed: +3 and +1 PER points (unpaired, against its mean: +8, -4)
    assert "less the teacher's: +2.00 ± 1.41 (+3.00, +1.00)" in text
    # skill less dphubert of the same seed: PER -1 and -4, SID +5 and +1
    assert (
        "less dphubert [target_speedup=4] of the same seed: PER -2.50 ± 2.12 (-1.00, -4.00), "
        "SID +3.00 ± 2.83 (+5.00, +1.00)" in text
    )
    assert "speed-up finalize kept (its clock): 4.70 ± 0.71 (4.20, 5.20)x" in text

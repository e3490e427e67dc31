"""A `skillkd compare` run, seed by seed: each student against the teacher and against a reference method,
both paired by seed, beside the speed each job landed at and measured.

    python -m bench.compare_seeds runs/heldout-compare-hubert-mini --reference dphubert

Reads the comparison's `comparison.json` (every probe run) and each student's `runs/NAME/student/report.json`.
Per student group (method x budget) it prints the mean ± sample sd over compression seeds, and the
per-seed values, of: PER and SID accuracy; each less the teacher's probed with the same seed; each less the
reference group's student of the same seed; parameters; and, for a latency budget, the speed-up finalize kept
(measured on its clock while landing) and the job's own end-of-run speed-up on one CPU thread (`report.json`
`speed`, teacher and student interleaved). Figures in points (PER and SID in %).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _pm(values: list[float], signed: bool = False, digits: int = 2) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    sign = "+" if signed else ""
    each = ", ".join(f"{v:{sign}.{digits}f}" for v in values)
    return f"{mean:{sign}.{digits}f} ± {sd:.{digits}f} ({each})"


def _report(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The student's report.json: at the run's recorded export directory, else (the comparison moved, or read
    from another directory) at its place under `out`."""
    source = run.get("source")
    if not source or run["group"] in ("teacher", "fbank"):
        return {}
    for path in (Path(source), out / "runs" / Path(source).parent.name / Path(source).name):
        if (path / "report.json").is_file():
            return json.loads((path / "report.json").read_text())
    return {}


def seed_figures(out: Path) -> dict[str, dict[int, dict[str, float | None]]]:
    """{group: {seed: figures}}: the probes' PER and SID (in %), the size (M), the landing's and the job's
    speed-ups."""
    comparison = json.loads((out / "comparison.json").read_text())
    groups: dict[str, dict[int, dict[str, float | None]]] = {}
    for run in comparison["runs"]:
        report = _report(out, run)
        measured = ((report.get("finalize") or {}).get("landing") or {}).get("measured") or {}
        speed = ((report.get("speed") or {}).get("cpu_1_thread") or {}).get("speedup")
        groups.setdefault(run["group"], {})[run["seed"]] = {
            "per": 100 * run["pr"]["per"] if "pr" in run else None,
            "sid": 100 * run["sid"]["accuracy"] if "sid" in run else None,
            "params": run["params"] / 1e6,
            "landed": measured.get("measured_speedup"),
            "predicted": (report.get("latency") or {}).get("predicted_speedup"),
            "speedup": speed,
        }
    return groups


def _paired(mine: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]], key: str) -> list[float]:
    return [
        mine[s][key] - other[s][key]
        for s in sorted(mine)
        if s in other and mine[s][key] is not None and other[s][key] is not None
    ]


def _values(mine: dict[int, dict[str, Any]], key: str) -> list[float]:
    return [mine[s][key] for s in sorted(mine) if mine[s][key] is not None]


def render(out: Path, reference: str | None = None) -> str:
    groups = seed_figures(out)
    teacher = groups.get("teacher", {})
    students = [g for g in groups if g not in ("teacher", "fbank")]
    if reference and reference not in groups:  # a method's name for its group ("dphubert [target_speedup=4]")
        named = [g for g in students if g.split(" [")[0] == reference]
        reference = named[0] if len(named) == 1 else reference
    lines = [f"`{out}`: mean ± sd over seeds (per seed in brackets, seeds {sorted(teacher)})", ""]
    lines += [f"- teacher: PER {_pm(_values(teacher, 'per'))}, SID {_pm(_values(teacher, 'sid'))}"]
    for group in students:
        mine = groups[group]
        lines += [
            "",
            f"**{group}** (seeds {sorted(mine)})",
            "",
            f"- params (M): {_pm(_values(mine, 'params'))}",
            f"- PER %: {_pm(_values(mine, 'per'))}; "
            f"less the teacher's: {_pm(_paired(mine, teacher, 'per'), True)}",
            f"- SID %: {_pm(_values(mine, 'sid'))}; "
            f"less the teacher's: {_pm(_paired(mine, teacher, 'sid'), True)}",
        ]
        if reference and reference in groups and group != reference:
            ref = groups[reference]
            lines += [
                f"- less {reference} of the same seed: PER {_pm(_paired(mine, ref, 'per'), True)}, "
                f"SID {_pm(_paired(mine, ref, 'sid'), True)}, "
                f"params {_pm(_paired(mine, ref, 'params'), True)}"
            ]
        if _values(mine, "landed"):
            lines += [
                f"- speed-up finalize kept (its clock): {_pm(_values(mine, 'landed'))}x; "
                f"cost model: {_pm(_values(mine, 'predicted'))}x"
            ]
        lines += [f"- the job's own speed-up at its end, 1 thread: {_pm(_values(mine, 'speedup'))}x"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparison", type=Path, help="a `skillkd compare --out` directory")
    parser.add_argument(
        "--reference", help="the student group others are paired with by seed (e.g. dphubert)"
    )
    args = parser.parse_args(argv)
    text = render(args.comparison, args.reference)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()

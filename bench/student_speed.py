"""Student vs teacher: parameters, MACs per audio second and measured CPU real-time factor, side by side.

    python -m bench.student_speed runs/demo/student                      # teacher from the student's report
    python -m bench.student_speed runs/x/student ../shared/teachers/hubert-mini --runs 7 --json out.json
    python -m bench.student_speed runs/x/student --device cuda           # adds a GPU measurement

Compresses nothing. Loads both models in one process and measures them with `core.evaluation.speed.measure`,
the same function that writes the `speed` block of every `report.json`: MACs counted on a forward pass over a
fixed `--seconds` utterance (10 s), and the real-time factor as the median of `--runs` forward passes of that
utterance, teacher and student interleaved, on the CPU with one thread and with every core this process may
use (and on CUDA with `--device cuda`). Prints a table; `--json` also writes every timed pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import SkillkdError
from core.evaluation.run import format_count
from core.evaluation.speed import RUNS, SECONDS, WARMUP, measure
from core.models import load_model
from core.timing import other_load


def teacher_of(student_dir: Path) -> Path:
    """The teacher path recorded in the student's report.json (or config.json)."""
    for name in ("report.json", "config.json"):
        try:
            path = json.loads((student_dir / name).read_text())["teacher"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if path and Path(path).exists():
            return Path(path)
    raise SystemExit(f"error: no teacher path that exists in {student_dir}/report.json; give TEACHER")


def format_table(result: dict[str, Any]) -> str:
    t, s = result["teacher"], result["student"]
    rows = [
        ("params", format_count(t["params"]), format_count(s["params"]), f"{result['params_ratio']:.2f}x"),
        (
            "MACs / s of audio",
            format_count(t["macs_per_second"]),
            format_count(s["macs_per_second"]),
            f"{result['macs_ratio']:.2f}x",
        ),
    ]
    for setting in ("cpu_1_thread", "cpu_all_threads", "cuda"):
        if setting in result:
            r = result[setting]
            label = {"cpu_1_thread": "RTF, CPU 1 thread", "cuda": "RTF, CUDA"}.get(
                setting, f"RTF, CPU {r['threads']} threads"
            )
            rows.append((label, f"{r['teacher_rtf']:.4f}", f"{r['student_rtf']:.4f}", f"{r['speedup']:.2f}x"))
    widths = [
        max(len(row[i]) for row in rows + [("", "teacher", "student", "teacher / student")]) for i in range(4)
    ]
    header = ("", "teacher", "student", "teacher / student")
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]
    p = result["protocol"]
    lines.append(
        f"(median of {p['runs']} interleaved passes of one {p['utterance_seconds']:g} s utterance, "
        f"after {p['warmup']} warm-up; MACs per second of audio at that length)"
    )
    return "\n".join(lines)


def busy_warning(others: float | None) -> str | None:
    """A warning when other work shared the CPU during the measurement (over 0.25 of a core on average).
    Interleaving protects the ratio from drift, not from contention: another process on a 2-core machine
    slows teacher and student unequally (bench/results/compute_budgets.md)."""
    if others is None or others <= 0.25:
        return None
    return (
        f"warning: other processes used {others:.2f} cores on average during the measurement; the ratios "
        "may be off by tens of percent: measure again on a quiet machine"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("student", type=Path, help="an exported student directory")
    p.add_argument(
        "teacher",
        type=Path,
        nargs="?",
        default=None,
        help="its teacher (default: the path in the student's report.json)",
    )
    p.add_argument("--seconds", type=float, default=SECONDS, help="length of the timed utterance")
    p.add_argument("--runs", type=int, default=RUNS, help="timed passes per model and setting")
    p.add_argument("--warmup", type=int, default=WARMUP, help="untimed passes per model first")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda adds a GPU measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the result (with every pass) here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.seconds <= 0:
        p.error("need --runs >= 1, --warmup >= 0 and --seconds > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    teacher_dir = args.teacher or teacher_of(args.student)
    try:
        student = load_model(args.student)
        teacher = load_model(teacher_dir)
    except SkillkdError as exc:
        raise SystemExit(f"error [{exc.code}]: {exc.message}") from None
    with other_load() as busy:
        result = measure(
            teacher, student, device=args.device, seconds=args.seconds, runs=args.runs, warmup=args.warmup
        )
    others = busy["other_cores"]
    report = {
        "benchmark": "student_speed",
        "command": "python -m bench.student_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "student_path": str(args.student),
        "teacher_path": str(teacher_dir),
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "other_processes_cores": None if others is None else round(others, 3),
        },
        **result,
    }
    print(format_table(result))
    if others is not None:
        print(f"other processes used {others:.2f} cores on average while this measured")
    busy = busy_warning(others)
    if busy:
        report["machine"]["warning"] = busy
        print(busy, file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()

"""How far one timing session's speed-up is from the next: the same teacher and student timed in several
fresh processes, the clock of finalize's landing and of the report (`core.timing`'s fresh-process timing).

    flock /tmp/bench.lock bench/quiet.sh python -m bench.clock_spread runs/x/student \
        ../shared/teachers/hubert-mini --processes 6 --runs 11 --json out.json

Each session is what finalize does once: one fresh Python process, the teacher and the student interleaved on
one `--seconds` utterance (one untimed pass each, then `--runs`), the median per model. With `--in-process`
the sessions alternate with the same timing in this process (fresh, here, fresh, here, ...), so the two clocks
meet the same minutes of the machine. Prints each session's teacher and student times and speed-up, then the
speed-up's mean, sd and range per clock, and the other processes' load over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from bench.student_speed import teacher_of
from core.errors import SkillkdError
from core.evaluation.speed import SECONDS, WARMUP
from core.models import load_model
from core.timing import other_load, timed_rounds, timed_rounds_in_fresh_process, torch_threads


def session(
    models: dict[str, Any], rate: int, *, fresh: bool, threads: int, runs: int, seconds: float
) -> dict:
    if fresh:
        times = timed_rounds_in_fresh_process(
            models, sample_rate=rate, seconds=seconds, runs=runs, warmup=WARMUP, threads=threads
        )
    else:
        with torch_threads(threads):
            times = timed_rounds(
                models, sample_rate=rate, device="cpu", seconds=seconds, runs=runs, warmup=WARMUP
            )
    teacher, student = (statistics.median(times[name]) for name in ("teacher", "student"))
    return {
        "clock": "fresh" if fresh else "here",
        "teacher_s": teacher,
        "student_s": student,
        "speedup": teacher / student,
    }


def pair_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every clock bench takes: the student, its teacher (default: the student's own), timed
    passes per model and session, threads, the utterance's seconds and the JSON to write (`write_json` reads
    them)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", type=Path)
    parser.add_argument("teacher", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=11, help="timed passes per model and session (11)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--json", type=Path)
    return parser


def load_pair(student: Path, teacher: Path | None) -> tuple[Path, Any, Any]:
    """The teacher's path (the student's own when None), the teacher and the student; a path that holds no
    model is an error line (its code and message, as bench.student_speed says it), not a traceback."""
    teacher_path = teacher or teacher_of(student)
    try:
        return teacher_path, load_model(teacher_path), load_model(student)
    except SkillkdError as exc:
        raise SystemExit(f"error [{exc.code}]: {exc.message}") from None


def write_json(
    path: Path, args: argparse.Namespace, teacher: Path, other_cores: float | None, **fields: Any
) -> None:
    """A timing bench's JSON: what was timed and how (student, teacher, threads, runs, seconds, CPU, other
    processes' cores), then `fields`."""
    out = {
        "student": str(args.student),
        "teacher": str(teacher),
        "threads": args.threads,
        "runs": args.runs,
        "seconds": args.seconds,
        "cpu": platform.processor() or platform.machine(),
        "other_cores": other_cores,
        **fields,
    }
    path.write_text(json.dumps(out, indent=2))


def summary(rows: list[dict]) -> str:
    values = [r["speedup"] for r in rows]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    low, high = min(values), max(values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f}x (range {low:.2f}-{high:.2f}, n={len(values)})"


def main(argv: list[str] | None = None) -> None:
    parser = pair_parser(__doc__)
    parser.add_argument("--processes", type=int, default=6, help="fresh-process sessions (6)")
    parser.add_argument("--in-process", action="store_true", help="alternate with sessions in this process")
    args = parser.parse_args(argv)
    teacher_path, teacher, student = load_pair(args.student, args.teacher)
    models = {"teacher": teacher, "student": student}
    rate = models["teacher"].config.sample_rate
    rows: list[dict] = []
    with other_load() as load:
        for i in range(args.processes):
            for fresh in (True, False) if args.in_process else (True,):
                row = session(
                    models, rate, fresh=fresh, threads=args.threads, runs=args.runs, seconds=args.seconds
                )
                rows.append({"session": i, **row})
                print(
                    f"{i}  {row['clock']:5}  teacher {row['teacher_s']:.4f} s  "
                    f"student {row['student_s']:.4f} s  {row['speedup']:.2f}x",
                    flush=True,
                )
    print(f"other processes: {load['other_cores']:.3f} cores; load average {os.getloadavg()[0]:.2f}")
    for clock in ("fresh", "here"):
        chosen = [r for r in rows if r["clock"] == clock]
        if chosen:
            print(f"{clock:5}: {summary(chosen)}")
    if args.json:
        write_json(args.json, args, teacher_path, load["other_cores"], sessions=rows)


if __name__ == "__main__":
    main()

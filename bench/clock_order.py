"""Whether a timing session's order favours some models: the teacher and N identical copies of one student,
timed together as finalize times its candidates (one fresh Python process, interleaved rounds, the median of
each), in each of `core.timing.ORDERS`. Identical copies should read the same speed-up; the copy that runs
right after the teacher in most rounds reads slower when the order lets one do so.

    flock /tmp/bench.lock bench/quiet.sh python -m bench.clock_order runs/x/student \
        ../shared/teachers/hubert-mini --copies 7 --sessions 3 --json out.json

The orders alternate within each session (which goes first alternates too), so they meet the same minutes of
the machine. Prints each session's speed-up per copy and the first copy's (the one after the teacher in
"alternating") against the median of the others, then those gaps per order, and the other processes' load.
"""

from __future__ import annotations

import copy
import os
import statistics

from bench.clock_spread import load_pair, pair_parser, write_json
from core.evaluation.speed import WARMUP
from core.timing import ORDERS, other_load, timed_rounds_in_fresh_process


def first_copy_gap(speedups: list[float]) -> float:
    """The first copy's speed-up over the median of the others', less 1 (negative: the first reads
    slower)."""
    return speedups[0] / statistics.median(speedups[1:]) - 1.0


def main(argv: list[str] | None = None) -> None:
    parser = pair_parser(__doc__)
    parser.add_argument("--copies", type=int, default=7, help="student copies (7: finalize's candidates)")
    parser.add_argument("--sessions", type=int, default=3, help="sessions per order (3)")
    args = parser.parse_args(argv)
    if args.copies < 2:
        raise SystemExit("error [bad_argument]: --copies must be 2 or more (a first copy and others)")
    teacher_path, teacher, student = load_pair(args.student, args.teacher)
    models = {"teacher": teacher, **{f"copy{i}": copy.deepcopy(student) for i in range(args.copies)}}
    rate = teacher.config.sample_rate
    rows: list[dict] = []
    orders = list(ORDERS)
    with other_load() as load:
        for i in range(args.sessions):
            for order in orders if i % 2 == 0 else orders[::-1]:
                times = timed_rounds_in_fresh_process(
                    models,
                    sample_rate=rate,
                    seconds=args.seconds,
                    runs=args.runs,
                    warmup=WARMUP,
                    threads=args.threads,
                    order=order,
                )
                medians = {name: statistics.median(t) for name, t in times.items()}
                speedups = [medians["teacher"] / medians[f"copy{c}"] for c in range(args.copies)]
                gap = first_copy_gap(speedups)
                rows.append(
                    {
                        "session": i,
                        "order": order,
                        "teacher_s": medians["teacher"],
                        "speedups": speedups,
                        "first_copy_gap": gap,
                    }
                )
                print(
                    f"{i}  {order:11}  teacher {medians['teacher']:.4f} s  "
                    + " ".join(f"{v:.2f}" for v in speedups)
                    + f"  first copy {gap:+.1%}",
                    flush=True,
                )
    print(f"other processes: {load['other_cores']:.3f} cores; load average {os.getloadavg()[0]:.2f}")
    for order in orders:
        gaps = [r["first_copy_gap"] for r in rows if r["order"] == order]
        spread = [max(r["speedups"]) / min(r["speedups"]) - 1.0 for r in rows if r["order"] == order]
        print(
            f"{order:11}: first copy against the others {statistics.mean(gaps):+.1%} "
            f"(sessions: {', '.join(f'{g:+.1%}' for g in gaps)}); spread among copies "
            f"{statistics.mean(spread):.1%}"
        )
    if args.json:
        write_json(args.json, args, teacher_path, load["other_cores"], copies=args.copies, sessions=rows)


if __name__ == "__main__":
    main()

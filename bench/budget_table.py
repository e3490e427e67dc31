"""Params, MACs and latency budgets side by side (issue 25): per budget, its students' size, the speed-up the
latency cost model predicts, the speed-up measured against the teacher on one CPU thread, and probe quality,
mean ± sd over seeds.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python -m bench.budget_table ../shared/teachers/hubert-mini \\
        --budget 'latency 4x=runs/hm-lat4-s0,runs/hm-lat4-s1,runs/hm-lat4-s2' \\
        --budget 'MACs 0.8=runs/hm-macs80-s0,runs/hm-macs80-s1,runs/hm-macs80-s2' \\
        --teacher-eval runs/hm-teacher-eval-s0,runs/hm-teacher-eval-s1,runs/hm-teacher-eval-s2 \\
        --json bench/results/budgets/hubert-mini.json --markdown bench/results/budgets/hubert-mini.md

Each budget is a label and the output directories of its `skillkd compress` runs (one per seed): the student
is `DIR/student` (its report.json gives the spec, size and landing), its `skillkd evaluate` result
`DIR-eval/evaluation.json` (`--eval-suffix`: probe PER and speaker-ID accuracy). `--teacher-eval` gives the
teacher's own evaluations (one per probe seed, paired with the students' seeds).

Speed: the teacher and each student in turn, interleaved (`core.evaluation.speed.interleaved_times`: one
untimed pass each, then `--runs` timed passes over one 10 s utterance, the order alternating), one thread;
`--rounds` such measurements per student, the students taken in turn within each round, so slow drift of the
machine touches them alike; a student's speed-up is the median over rounds of teacher median / student median.
Other processes' CPU use during each measurement is recorded (from /proc/stat): measure on a quiet machine.

Prediction: the teacher's latency cost model on the same target (`core.calibrate.latency.cost_model_for`: the
fit a `--target-speedup` run of that teacher cached, or a fresh fit), applied to every student, whatever its
budget: predicted teacher seconds / predicted student seconds, beside the measured speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.output import write_outputs
from core.calibrate.latency import cost_model_for, cpu_model
from core.errors import SkillkdError
from core.evaluation.facts import count_macs, count_parameters
from core.evaluation.speed import SECONDS, WARMUP, interleaved_times
from core.models import load_model
from core.models.latency import CostModel
from core.timing import other_load, torch_threads


def parse_budget(text: str) -> tuple[str, list[Path]]:
    """'LABEL=DIR,DIR,...' -> (label, dirs)."""
    label, sep, dirs = text.partition("=")
    paths = [Path(d.strip()) for d in dirs.split(",") if d.strip()]
    if not sep or not label.strip() or not paths:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR[,DIR...], found {text!r}")
    return label.strip(), paths


def evaluation_of(path: Path) -> dict[str, Any]:
    """Probe seed, PER % and SID accuracy % of the first model in an evaluation.json (None where not
    probed)."""
    document = json.loads(path.read_text())
    model = document["models"][0]
    per = model.get("pr", {}).get("per")
    sid = model.get("sid", {}).get("accuracy")
    return {
        "seed": document.get("seed"),
        "per": None if per is None else 100 * per,
        "sid": None if sid is None else 100 * sid,
    }


def teacher_evaluations(dirs: str) -> dict[str, Any]:
    """The teacher's evaluations (comma-separated evaluation directories), and its PER / SID lists."""
    evaluations = [evaluation_of(Path(d) / "evaluation.json") for d in dirs.split(",") if d.strip()]
    return {
        "evaluations": evaluations,
        "per": [e["per"] for e in evaluations if e["per"] is not None],
        "sid": [e["sid"] for e in evaluations if e["sid"] is not None],
    }


def refresh_evaluations(report: dict[str, Any], eval_suffix: str) -> None:
    """Read every student's evaluation again (`--render`: one finished after the speed was measured)."""
    for budget in report["budgets"]:
        for student in budget["students"]:
            run = Path(student["run"])
            path = run.parent / f"{run.name}{eval_suffix}" / "evaluation.json"
            if path.exists():
                student["evaluation"] = evaluation_of(path)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def student_facts(run: Path, eval_suffix: str, cost: CostModel, teacher_s: float) -> dict[str, Any]:
    report = json.loads((run / "student" / "report.json").read_text())
    student = load_model(run / "student")
    predicted_s = cost.predict_seconds(student)
    evaluation = run.parent / f"{run.name}{eval_suffix}" / "evaluation.json"
    return {
        "run": str(run),
        "seed": report["spec"]["seed"],
        "targets": report.get("targets"),
        "params": report["student"]["num_params"],
        "macs_per_second": report["student"]["macs_per_second"],
        "predicted_speedup": teacher_s / predicted_s,
        "job_latency": report.get("latency"),  # a latency budget's own prediction and measurement
        "evaluation": evaluation_of(evaluation) if evaluation.exists() else None,
        "model": student,
    }


def measure_speed(
    teacher: torch.nn.Module, students: list[dict[str, Any]], rounds: int, runs: int
) -> list[dict[str, Any]]:
    """Per round, each student against the teacher in turn; appends each round's ratio to the student."""
    log = []
    for r in range(rounds):
        for s in students:
            with other_load() as busy, torch_threads(1):
                times = interleaved_times(
                    {"teacher": teacher, "student": s["model"]}, seconds=SECONDS, runs=runs, warmup=WARMUP
                )
            others = busy["other_cores"]
            ratio = statistics.median(times["teacher"]) / statistics.median(times["student"])
            s.setdefault("rounds", []).append(round(ratio, 4))
            log.append(
                {
                    "round": r,
                    "run": s["run"],
                    "speedup": ratio,
                    "teacher_median_s": statistics.median(times["teacher"]),
                    "student_median_s": statistics.median(times["student"]),
                    "other_processes_cores": None if others is None else round(others, 3),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                    "times_s": {k: [round(t, 5) for t in v] for k, v in times.items()},
                }
            )
            print(f"round {r + 1}/{rounds} {s['run']}: {ratio:.2f}x (others {others or 0:.2f} cores)")
    for s in students:
        s["measured_speedup"] = statistics.median(s["rounds"])
    return log


def clock_drift(speed_log: list[dict[str, Any]]) -> str:
    """How far the teacher's own time moved between the timings (its median per timing, slowest over fastest)
    beside the most any one student's moved: when the teacher's moves more, every ratio moves with it (on
    this project's hosts the teacher's time, not the students', is what drifts)."""
    teacher = [r["teacher_median_s"] for r in speed_log if r.get("teacher_median_s")]
    if not teacher:
        return ""
    by_run: dict[str, list[float]] = {}
    for r in speed_log:
        if r.get("student_median_s"):
            by_run.setdefault(r["run"], []).append(r["student_median_s"])
    students = max((max(v) / min(v) - 1.0 for v in by_run.values() if len(v) > 1), default=0.0)
    return (
        f" The teacher's median per timing took {min(teacher):.3f}-{max(teacher):.3f} s "
        f"(+{max(teacher) / min(teacher) - 1.0:.0%} slowest over fastest); the most any student's moved "
        f"between its rounds: +{students:.0%}."
    )


def format_markdown(report: dict[str, Any]) -> str:
    t = report["teacher"]
    lines = [
        f"## {t['name']}: budgets at about equal measured speed-up",
        "",
        f"`{report['command']}`",
        "",
        "| budget | params | MACs / audio-s | predicted speed-up | measured speed-up, 1 thread | PER % "
        "(paired: - teacher) | SID % (paired) |",
        "|---|---|---|---|---|---|---|",
        f"| teacher | {t['params'] / 1e6:.2f}M | {t['macs_per_second'] / 1e9:.3f}G | 1 | 1 "
        f"| {mean_sd(t['per'])} | {mean_sd(t['sid'])} |",
    ]
    teacher_by_seed = {e["seed"]: e for e in t.get("evaluations", [])}

    def paired(students: list[dict[str, Any]], metric: str) -> str:
        """Student minus teacher, each student against the teacher probed with its seed."""
        diffs = [
            s["evaluation"][metric] - teacher_by_seed[s["seed"]][metric]
            for s in students
            if s["evaluation"] and s["seed"] in teacher_by_seed
        ]
        return f"{statistics.mean(diffs):+.2f}" if diffs else "-"

    for b in report["budgets"]:
        st = b["students"]
        b["paired_vs_teacher"] = {"per": paired(st, "per"), "sid": paired(st, "sid")}
        lines.append(
            f"| {b['label']} | {mean_sd([s['params'] / 1e6 for s in st])}M "
            f"| {mean_sd([s['macs_per_second'] / 1e6 for s in st])}M "
            f"| {mean_sd([s['predicted_speedup'] for s in st])}x "
            f"| **{mean_sd([s['measured_speedup'] for s in st])}x** "
            f"| {mean_sd([s['evaluation']['per'] for s in st if s['evaluation']])} "
            f"({b['paired_vs_teacher']['per']}) "
            f"| {mean_sd([s['evaluation']['sid'] for s in st if s['evaluation']])} "
            f"({b['paired_vs_teacher']['sid']}) |"
        )
    lines += [
        "",
        "Per student (speed-up per round; predicted by the teacher's cost model; the job's own prediction "
        "for a latency budget):",
        "",
        "| budget | seed | params | predicted | measured (rounds) | job predicted / measured | PER % "
        "| SID % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in report["budgets"]:
        for s in b["students"]:
            job = s["job_latency"] or {}
            job_text = (
                f"{job['predicted_speedup']:.2f}x / {job['measured_speedup']:.2f}x"
                if job.get("predicted_speedup") and job.get("measured_speedup")
                else "-"
            )
            e = s["evaluation"] or {}
            lines.append(
                f"| {b['label']} | {s['seed']} | {s['params'] / 1e6:.3f}M | {s['predicted_speedup']:.2f}x "
                f"| {s['measured_speedup']:.2f}x ({', '.join(f'{r:.2f}' for r in s['rounds'])}) | {job_text} "
                f"| {e.get('per', float('nan')):.2f} | {e.get('sid', float('nan')):.2f} |"
            )
    others = [
        r["other_processes_cores"] for r in report["speed_log"] if r["other_processes_cores"] is not None
    ]
    lines += [
        "",
        f"Machine: {report['machine']['cpu']}, torch {report['machine']['torch']}; other processes used "
        f"{min(others, default=0):.2f}-{max(others, default=0):.2f} cores during the measurements; 1-minute "
        f"load average {report['load_average_before']:.2f} before, {report['load_average_after']:.2f} after."
        + clock_drift(report["speed_log"]),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("teacher", type=Path)
    p.add_argument("--budget", type=parse_budget, action="append", default=[], help="LABEL=DIR,DIR,...")
    p.add_argument("--teacher-eval", default="", help="the teacher's evaluation directories, comma-separated")
    p.add_argument("--eval-suffix", default="-eval")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument(
        "--render",
        type=Path,
        help="measure nothing: re-render this earlier --json (with --teacher-eval and the students' "
        "evaluations read again) to --markdown",
    )
    args = p.parse_args(argv)
    if args.render is not None:
        if not args.render.is_file():
            p.error(f"--render: no earlier --json at {args.render}")
        report = json.loads(args.render.read_text())
        report["teacher"].update(teacher_evaluations(args.teacher_eval))
        refresh_evaluations(report, args.eval_suffix)
        write_outputs(report, format_markdown(report), args.json, args.markdown)
        return report
    if not args.budget:
        p.error("give at least one --budget LABEL=DIR,DIR,...")

    runs = [d for _, dirs in args.budget for d in dirs]
    missing = [str(d) for d in runs if not (d / "student" / "report.json").is_file()]
    if missing:  # before the teacher is loaded and fitted: a typo costs nothing
        p.error(f"--budget: no finished job (student/report.json) in {', '.join(missing)}")
    load_before = os.getloadavg()[0]
    try:
        teacher = load_model(args.teacher)
    except SkillkdError as exc:
        p.error(f"teacher: [{exc.code}] {exc.message}")
    document = cost_model_for(teacher, target="cpu", threads=1, seconds=SECONDS, out=None)
    cost = CostModel.from_dict(document["cost_model"])
    teacher_s = document["teacher_predicted_s"]
    budgets = [
        {"label": label, "students": [student_facts(d, args.eval_suffix, cost, teacher_s) for d in dirs]}
        for label, dirs in args.budget
    ]
    students = [s for b in budgets for s in b["students"]]
    speed_log = measure_speed(teacher, students, args.rounds, args.runs)
    for s in students:
        del s["model"]
    report = {
        "benchmark": "budget_table",
        "command": "python -m bench.budget_table " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "teacher": {
            "name": args.teacher.name,
            "params": count_parameters(teacher),
            "macs_per_second": count_macs(teacher, seconds=SECONDS).macs_per_second,
            **teacher_evaluations(args.teacher_eval),
        },
        "cost_model": {"key_digest": document["key_digest"], "from_cache": document["from_cache"]},
        "rounds": args.rounds,
        "runs": args.runs,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "budgets": budgets,
        "speed_log": speed_log,
    }
    write_outputs(report, format_markdown(report), args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()

"""Data-parallel training throughput on CPU: 1 process vs 2 processes (gloo, one thread each), and
DistributedDataParallel (what the engine runs) against the old code path (issue 24: every rank all-reduced one
flattened gradient after the whole backward, so communication never overlapped it).

    flock /tmp/bench.lock python -m bench.ddp_throughput ../shared/teachers/hubert-mini \\
        --json bench/results/ddp_throughput.json --markdown bench/results/ddp_throughput.md

Each case is one stage-1 optimiser step of `core.distill.train.DistillStep` (teacher forward, masked student
forward and backward, Lagrangian, clipping, AdamW) on a fixed random batch of `--batch-seconds` per process
(the quick preset's 6 s: 2 utterances of 3 s) with the quick recipe:

    single     1 process, one batch per step
    ddp        2 processes, one batch each per step (a global batch of two), DDP as the engine runs it
    flat       2 processes, the old path: no DDP; after the backward, one all-reduce of all gradients
               flattened into one tensor, divided by 2 (before the optimiser step)

Throughput is audio seconds per wall second: (processes x batch seconds) / the median step time of rank 0
(the collectives keep the ranks in step). The cases run in turn, `--rounds` times, the order rotated each
round, so the machine's load falls on all of them alike; the 1-minute load average is recorded around each
run. Every process is pinned to one thread (`torch.set_num_threads(1)`), so 2 processes use 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.output import write_outputs
from core.distill.parallel import end_group
from core.distill.targets import ClusterTargets
from core.distill.train import DistillStep, average_across_ranks
from core.estimate import default_clusters
from core.models import load_model, make_student
from core.spec import DEFAULT_SPARSITY, CompressionSpec

CASES = ("single", "ddp", "flat")
SAMPLE_RATE = 16_000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(
    rank: int, case: str, world: int, port: int, teacher_dir: str, args: dict[str, Any], out: Any
) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        spec = CompressionSpec(preset="quick")
        teacher = load_model(teacher_dir)
        torch.manual_seed(0)
        student = make_student(teacher)
        clusters = default_clusters(spec, teacher.num_layers)
        targets = ClusterTargets(clusters, teacher.config.hidden_size)
        device = torch.device("cpu")
        step = DistillStep(
            student,
            teacher,
            targets,
            spec.recipe(1),
            device,
            target_sparsity=DEFAULT_SPARSITY,
            teacher_params=teacher.num_params(),
            world_size=world if case == "ddp" else 1,
        )
        if case == "flat":
            params = [p for group in step.optimizer.param_groups for p in group["params"]]
            original = step.optimizer.step

            def averaged_step(*a: Any, **kw: Any) -> Any:  # the old path: every gradient, flattened
                average_across_ranks([p.grad for p in params if p.grad is not None], world)
                return original(*a, **kw)

            step.optimizer.step = averaged_step  # type: ignore[method-assign]
        g = torch.Generator().manual_seed(rank)
        utterances = max(1, round(args["batch_seconds"] / args["utterance_seconds"]))
        waveforms = torch.randn(utterances, round(args["utterance_seconds"] * SAMPLE_RATE), generator=g)
        times = []
        for i in range(args["warmup"] + args["steps"]):
            start = time.perf_counter()
            values, _, _ = step(i, waveforms)
            float(values["loss"])  # the loop reads the figures back
            if i >= args["warmup"]:
                times.append(time.perf_counter() - start)
        if rank == 0:
            out.put({"step_s": statistics.median(times), "times_s": [round(t, 4) for t in times]})
    finally:
        if world > 1:
            end_group()


def run_case(case: str, teacher: Path, args: argparse.Namespace) -> dict[str, Any]:
    world = 1 if case == "single" else 2
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    settings = {k: getattr(args, k) for k in ("batch_seconds", "utterance_seconds", "warmup", "steps")}
    load_before = os.getloadavg()[0]
    mp.start_processes(
        _rank, args=(case, world, _port(), str(teacher), settings, out), nprocs=world, start_method="spawn"
    )
    result = out.get(timeout=60)
    audio = world * args.batch_seconds
    return {
        "case": case,
        "processes": world,
        "audio_s_per_step": audio,
        **result,
        "audio_s_per_s": audio / result["step_s"],
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_case: dict[str, list[dict[str, Any]]] = {c: [r for r in runs if r["case"] == c] for c in CASES}
    rounds = len(by_case["single"])
    per_round = [
        {
            "ddp_speedup_over_1_process": by_case["ddp"][i]["audio_s_per_s"]
            / by_case["single"][i]["audio_s_per_s"],
            "flat_over_ddp_step_time": by_case["flat"][i]["step_s"] / by_case["ddp"][i]["step_s"],
        }
        for i in range(rounds)
    ]
    cases = {
        case: {
            "audio_s_per_s_median": statistics.median(r["audio_s_per_s"] for r in rs),
            "step_s_median": statistics.median(r["step_s"] for r in rs),
        }
        for case, rs in by_case.items()
    }
    return {
        "cases": cases,
        "per_round": per_round,
        "ddp_speedup_over_1_process_median": statistics.median(
            p["ddp_speedup_over_1_process"] for p in per_round
        ),
        "flat_over_ddp_step_time_median": statistics.median(p["flat_over_ddp_step_time"] for p in per_round),
    }


def format_markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# Data-parallel throughput on CPU ({report['teacher']}, stage-1 step, quick recipe)",
        "",
        f"`{report['command']}`",
        "",
        f"{report['rounds']} rounds, cases in turn (order rotated), {report['steps']} timed steps each after "
        f"{report['warmup']} warm-up; {report['batch_seconds']:g} s of audio per process per step; one "
        f"thread per process; {report['cpus']} CPUs; torch {report['torch']}; load average (1 min) "
        f"{report['load_range'][0]:.2f}-{report['load_range'][1]:.2f}.",
        "",
        "| case | processes | median step (s) | audio s per s |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        c = s["cases"][case]
        procs = 1 if case == "single" else 2
        lines.append(f"| {case} | {procs} | {c['step_s_median']:.3f} | {c['audio_s_per_s_median']:.2f} |")
    lines += [
        "",
        f"- 2 processes (DDP) over 1 process, throughput, median of per-round ratios: "
        f"**{s['ddp_speedup_over_1_process_median']:.2f}x** "
        f"(per round: {', '.join(format(p['ddp_speedup_over_1_process'], '.2f') for p in s['per_round'])})",
        f"- old path (flattened all-reduce after the backward) over DDP, step time, median of per-round "
        f"ratios: **{s['flat_over_ddp_step_time_median']:.2f}x** "
        f"(per round: {', '.join(format(p['flat_over_ddp_step_time'], '.2f') for p in s['per_round'])})",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", type=Path, help="a Hugging Face teacher directory (the mini teacher)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per case and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-seconds", type=float, default=6.0, help="audio per process per step")
    p.add_argument("--utterance-seconds", type=float, default=3.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs = []
    for r in range(args.rounds):
        order = CASES[r % len(CASES) :] + CASES[: r % len(CASES)]
        for case in order:
            result = run_case(case, args.teacher, args)
            print(f"round {r} {case}: {result['audio_s_per_s']:.2f} audio s/s, step {result['step_s']:.3f} s")
            runs.append({"round": r, **result})
    loads = [x for run in runs for x in run["loadavg_1min_before_after"]]
    report = {
        "teacher": args.teacher.name,
        "command": "python -m bench.ddp_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_seconds": args.batch_seconds,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_range": [min(loads), max(loads)],
        "runs": runs,
        "summary": summarise(runs),
    }
    write_outputs(report, format_markdown(report), args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()

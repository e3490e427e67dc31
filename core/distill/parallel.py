"""Data-parallel training stages: N processes (one per GPU; gloo on CPU), one job.

The parent process keeps the pipeline; for a training stage it starts N fresh processes (spawn: no CUDA state
is inherited), each rank trains on its own slice of every epoch's batches, and DistributedDataParallel
averages the gradients in buckets while the backward runs (`core.distill.train.DistillStep`), so weights,
masks and multipliers stay identical on all ranks. Rank 0 writes the checkpoints and sends progress events to
the parent through a queue; the parent turns its caller's `should_stop` into an event the ranks poll.
"""

from __future__ import annotations

import queue as queue_mod
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import SkillkdError, StopRequested, TrainingError
from core.events import Event, OnEvent, ShouldStop
from core.processes import die_with_parent


@dataclass
class StageJob:
    """Everything a rank needs to rebuild its models and data for one stage (picklable)."""

    stage: str  # "distill_prune" | "final_distill"
    spec_json: str
    teacher: str
    audio: str
    workdir: str
    clusters: list[list[int]]
    budgets: list[dict[str, Any]] = field(default_factory=list)  # core.spec.Budget.to_dict() of stage 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world_size: int, port: int, job: StageJob, events: Any, stop: Any) -> None:
    die_with_parent(signal.SIGKILL)
    from core.data import scan_audio
    from core.distill import build
    from core.distill.train import StageContext, train_stage
    from core.inputs import task_head
    from core.models import load_model
    from core.spec import Budget, CompressionSpec

    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        spec = CompressionSpec.model_validate_json(job.spec_json)
        teacher = load_model(job.teacher).to(device)
        head = task_head(job.teacher, spec)
        head = head.to(device) if head is not None else None
        sr = teacher.config.sample_rate
        catalog = scan_audio(job.audio)
        workdir = Path(job.workdir)
        dim = teacher.config.hidden_size
        if job.stage == "distill_prune":
            recipe = spec.recipe(1)
            student, targets = build.new_student(teacher, job.clusters, spec, device, head)
            seed = spec.seed
        else:
            recipe = spec.recipe(2)
            student, targets = build.load_result(
                workdir, build.FINALIZED, job.clusters, dim, spec, device, head
            )
            seed = spec.seed + 1
        batches = build.train_batches(catalog, sr, recipe, seed, rank=rank, world_size=world_size)
        ctx = StageContext(
            workdir / job.stage,
            recipe,
            device,
            job.stage,
            budgets=[Budget.from_dict(b) for b in job.budgets],
            macs_seconds=spec.macs_reference_seconds,
            on_event=lambda e: events.put(("event", e.to_dict())),
            should_stop=stop.is_set,
            seed=seed,
            rank=rank,
            world_size=world_size,
            compile=spec.compile,
            data_workers=spec.data_workers,
        )
        summary = train_stage(student, teacher, targets, batches, ctx)
        if rank == 0:
            events.put(("result", summary))
    except StopRequested as exc:
        if rank == 0:
            events.put(("stopped", exc.message))
    except SkillkdError as exc:
        events.put(("error", (type(exc).__name__, exc.message)))
    except Exception as exc:  # reported to the parent, which raises it there
        events.put(("error", ("RuntimeError", f"rank {rank}: {type(exc).__name__}: {exc}")))
    finally:
        dist.destroy_process_group()


def run_parallel_stage(
    job: StageJob, world_size: int, on_event: OnEvent, should_stop: ShouldStop
) -> dict[str, Any]:
    """Run one training stage on `world_size` ranks; returns rank 0's summary."""
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise SkillkdError(f"gpus={world_size} but only {torch.cuda.device_count()} CUDA devices are visible")
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    port = _free_port()
    # Not daemonic: a daemonic process may not start children, and each rank starts data-loader workers.
    # The ranks die with this process instead (`die_with_parent`), and are joined or terminated below.
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, port, job, events, stop), daemon=False)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    result: dict[str, Any] | None = None
    outcome: tuple[str, Any] | None = None
    try:
        while True:
            try:
                kind, payload = events.get(timeout=0.2)
            except queue_mod.Empty:
                if not stop.is_set() and should_stop():
                    stop.set()
                if all(not p.is_alive() for p in procs):
                    break
                continue
            if kind == "event":
                on_event(Event(**payload))
            elif kind == "result":
                result = payload
            elif outcome is None:
                outcome = (kind, payload)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    while not events.empty():  # anything sent after the last poll
        kind, payload = events.get_nowait()
        if kind == "result":
            result = payload
        elif kind != "event" and outcome is None:
            outcome = (kind, payload)
    if outcome is not None and outcome[0] == "stopped":
        raise StopRequested(str(outcome[1]))
    if outcome is not None:
        name, message = outcome[1]
        raise TrainingError(message) if name == "TrainingError" else SkillkdError(message)
    if result is None:
        codes = [p.exitcode for p in procs]
        raise SkillkdError(f"a training process died without a result (exit codes {codes})")
    return result

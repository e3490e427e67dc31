"""Data-parallel training stages: N processes (one per GPU; gloo on CPU), one job, on PyTorch's own engine.

Two ways in, one group shape. Under a launcher (torchrun on any number of nodes, srun running torchrun, a
Kubernetes PyTorchJob) every process runs `skillkd compress`: rank 0 runs the pipeline and sends each training
stage to the others (`follow_stages`). Otherwise (`--gpus N` on one machine, the service's N-GPU jobs, the
library) the process that runs the pipeline starts each training stage on N ranks through torch's elastic
launcher API (`torch.distributed.launcher.api.elastic_launch`, what torchrun runs): the agent sets every
rank's environment, and a rank that dies makes it restart the group, which resumes from the stage's last
checkpoint (`SKILLKD_MAX_RESTARTS`, default 1). Each rank trains on its own slice of every step's batches and
DistributedDataParallel averages the gradients in buckets while the backward runs
(`core.distill.train.DistillStep`), so weights, masks and multipliers stay identical on all ranks. Rank 0
writes the checkpoints and sends progress events to the caller through a queue; the caller turns its
`should_stop` into an event the ranks poll (they ignore Ctrl-C themselves: the caller decides).
"""

from __future__ import annotations

import gc
import logging
import os
import queue as queue_mod
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.errors import SkillkdError, StopRequested, TrainingError
from core.events import Event, OnEvent, ShouldStop, ignore_event, never_stop
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
    accumulation: int = 1  # batches each rank adds up per optimiser step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_rank(
    job: StageJob,
    rank: int,
    world_size: int,
    device: torch.device,
    on_event: OnEvent,
    should_stop: ShouldStop,
) -> dict[str, Any]:
    """One rank's share of a training stage, in a process group already joined: rebuild the models and the
    rank's shard of the batches from `job`, train, return the stage's summary (rank 0's is the one used)."""
    from core.data import scan_audio
    from core.distill import build
    from core.distill.quant_aware import int8_aware
    from core.distill.train import StageContext, train_stage
    from core.inputs import task_head, task_labels
    from core.models import load_model
    from core.spec import Budget, CompressionSpec

    spec = CompressionSpec.model_validate_json(job.spec_json)
    catalog = scan_audio(job.audio)
    same_inputs_everywhere(job, catalog)
    teacher = load_model(job.teacher).to(device)
    head = task_head(job.teacher, spec)
    labels = task_labels(head, catalog, spec, job.teacher)
    head = head.to(device) if head is not None else None
    sr = teacher.config.sample_rate
    workdir = Path(job.workdir)
    dim = teacher.config.hidden_size
    if job.stage == "distill_prune":
        recipe = spec.recipe(1)
        student, targets = build.new_student(teacher, job.clusters, spec, device, head, labels)
        seed = spec.seed
    else:
        recipe = spec.recipe(2)
        student, targets = build.load_result(
            workdir, build.FINALIZED, job.clusters, dim, spec, device, head, labels
        )
        seed = spec.seed + 1
    batches = build.train_batches(
        catalog, sr, recipe, seed, rank=rank, world_size=world_size, accumulation=job.accumulation
    )
    budgets = [Budget.from_dict(b) for b in job.budgets]
    cost_model = None
    if any(b.kind == "latency" for b in budgets):  # fitted by the calibrate stage, in the shared workdir
        from core.calibrate.latency import COST_MODEL_FILE, load_cost_model

        cost_model = load_cost_model(workdir / "calibrate" / COST_MODEL_FILE)
    ctx = StageContext(
        workdir / job.stage,
        recipe,
        device,
        job.stage,
        budgets=budgets,
        macs_seconds=spec.macs_reference_seconds,
        cost_model=cost_model,
        on_event=on_event,
        should_stop=should_stop,
        seed=seed,
        rank=rank,
        world_size=world_size,
        accumulation=job.accumulation,
        compile=spec.compile,
        data_workers=spec.data_workers,
        whole=build.transcribed(catalog, targets, sr, seed, rank=rank, world_size=world_size),
    )
    if job.stage == "final_distill" and spec.int8_aware:  # each rank keeps its own running ranges
        with int8_aware(student, spec.int8_consistency) as quantised:
            ctx.int8 = quantised
            return {**train_stage(student, teacher, targets, batches, ctx), "int8_aware": quantised}
    return train_stage(student, teacher, targets, batches, ctx)


def inputs_digest(teacher: Path | str, catalog: Any) -> tuple[str, str]:
    """(sha256 of the teacher's files, sha256 of the audio's usable files: names, sizes, durations), as one
    rank sees them."""
    import hashlib

    from core.inputs import teacher_sha256

    audio = hashlib.sha256()
    for item in sorted(catalog.items, key=lambda i: i.id):
        size = Path(item.path).stat().st_size if Path(item.path).exists() else -1
        audio.update(f"{item.id}\0{size}\0{item.duration_s:.4f}\n".encode())
    return teacher_sha256(teacher), audio.hexdigest()


def same_inputs_everywhere(job: StageJob, catalog: Any) -> None:
    """Before training, every rank hashes the teacher and the audio it sees at the job's paths; if one differs
    from rank 0's (machines without a shared filesystem, a stale copy), every rank raises the same error."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, inputs_digest(job.teacher, catalog))
    teacher_off = [rank for rank, (t, _) in enumerate(seen) if t != seen[0][0]]
    audio_off = [rank for rank, (_, a) in enumerate(seen) if a != seen[0][1]]
    if teacher_off or audio_off:
        what = [f"the teacher on ranks {teacher_off}"] if teacher_off else []
        what += [f"the audio on ranks {audio_off}"] if audio_off else []
        raise SkillkdError(
            f"{' and '.join(what)} differ from rank 0's (sha256 of the files at {Path(job.teacher).name} / "
            f"{Path(job.audio).name}): every machine must see the same teacher and audio at the same paths "
            "(a shared filesystem)"
        )


def _elastic_rank(job: StageJob, events: Any, stop: Any) -> None:
    """One rank of a stage started by the elastic agent (`run_parallel_stage`): its environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT) is the agent's, as under torchrun.
    Errors of the job (bad input, a diverged loss) are reported and end the stage on every rank. Anything else
    (a peer that died: gloo's "Connection closed by peer", NCCL's timeout; out of memory) is reported as a
    crash and fails this rank, so that the agent restarts the group, which resumes from the last
    checkpoint."""
    die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole terminal group: the caller stops
    rank = int(os.environ.get("RANK", "-1"))
    try:
        rank, world, device = join_launched_group()

        def send(event: Event) -> None:
            events.put(("event", event.to_dict()))

        summary = train_rank(job, rank, world, device, send if rank == 0 else ignore_event, stop.is_set)
        if rank == 0:
            events.put(("result", summary))
    except StopRequested as exc:
        if rank == 0:
            events.put(("stopped", exc.message))
    except SkillkdError as exc:
        events.put(("error", (type(exc).__name__, exc.message)))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        events.put(("crash", f"rank {rank}: {type(exc).__name__}: {first}"))
        raise SystemExit(1) from None  # no traceback on the terminal: the caller says what happened
    finally:
        if dist.is_initialized():
            end_group()


# ------------------------------------------------------------------------------------------------------------
# A group started by a launcher (torchrun, srun running torchrun, a Kubernetes PyTorchJob): every process runs
# `skillkd compress`; rank 0 runs the pipeline and, at each training stage, sends the stage to the others,
# which wait for it (`follow_stages`) and train their shard beside it.

LAUNCH_TIMEOUT = timedelta(hours=12)  # followers wait in a collective while rank 0 calibrates or exports


def launched_group() -> tuple[int, int] | None:
    """(rank, world size) when a launcher started this process as one of several (WORLD_SIZE > 1 with RANK,
    as torchrun and PyTorchJob set them), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise SkillkdError(
            f"WORLD_SIZE={world} but RANK or MASTER_ADDR is not set: start every process with a launcher "
            "(torchrun, srun with torchrun, a PyTorchJob)"
        )
    return int(os.environ["RANK"]), world


def join_launched_group() -> tuple[int, int, torch.device]:
    """Join the launcher's process group (env://; NCCL with one GPU per local rank, else gloo): (rank, world
    size, this rank's device)."""
    group = launched_group()
    assert group is not None
    rank, world = group
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda and local >= torch.cuda.device_count():
        raise SkillkdError(
            f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible on this node"
        )
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=_attempt_store(rank, world),
            rank=rank,
            world_size=world,
            timeout=LAUNCH_TIMEOUT,
        )
    return rank, world, device


JOIN_TIMEOUT = timedelta(minutes=30)  # how long a group's ranks wait for each other to (re)start


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The launcher's store (MASTER_ADDR:MASTER_PORT: the elastic agent's store, or one rank 0 hosts, as
    `env://` would use it), its keys under a prefix that this incarnation of the group alone uses
    (`group_prefix`). An elastic agent reuses its store when it restarts the group after a rank died, and
    `env://` adds no prefix: restarted ranks then read the dead ones' gloo addresses and fail to connect
    ("connectFullMesh failed ... Connection refused", 2 runs in 3)."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world,
        is_master=rank == 0 and not agent_store,
        timeout=JOIN_TIMEOUT,
        multi_tenant=not agent_store,
    )
    prefix = group_prefix(store, rank, world)
    store.set_timeout(LAUNCH_TIMEOUT)
    return dist.PrefixStore(prefix, store)


def group_prefix(store: dist.Store, rank: int, world: int, poll_s: float = 0.05) -> str:
    """A store prefix that every rank of this incarnation of the group gets, and no earlier one had.

    Restart counts cannot be it: node agents count restarts differently (an agent whose ranks did not fail
    restarts them for the new membership without counting a retry). Instead each rank counts its own starts
    in the store (`joins/<rank>`: a number no earlier incarnation of that rank had) and rank 0 hands every
    rank's current incarnation its fresh prefix: rank r says hello under its count, rank 0 answers that hello
    with the prefix and waits for r's acknowledgement of that prefix under the same count. A hello left by an
    incarnation that died is answered but never acknowledged, an acknowledgement left by an earlier group
    names another prefix: rank 0 goes on waiting for the incarnation that lives."""
    import time

    mine = int(store.add(f"skillkd/joins/{rank}", 1))
    if rank != 0:
        store.set(f"skillkd/hello/{rank}/{mine}", "1")
        store.wait([f"skillkd/go/{rank}/{mine}"])
        prefix = store.get(f"skillkd/go/{rank}/{mine}").decode()
        store.set(f"skillkd/ack/{rank}/{mine}", prefix)
        return prefix
    prefix = f"skillkd/group_{mine}_{uuid.uuid4().hex[:8]}"
    waiting = set(range(1, world))
    deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds()
    while waiting:
        for other in sorted(waiting):
            count = int(store.add(f"skillkd/joins/{other}", 0))
            ack = f"skillkd/ack/{other}/{count}"
            if store.check([ack]) and store.get(ack).decode() == prefix:  # not an earlier group's
                waiting.discard(other)
            elif store.check([f"skillkd/hello/{other}/{count}"]):
                store.set(f"skillkd/go/{other}/{count}", prefix)
        if waiting:
            if time.monotonic() > deadline:
                raise SkillkdError(
                    f"ranks {sorted(waiting)} did not join the group within {JOIN_TIMEOUT} (did their "
                    "processes start? the launcher's log says)"
                )
            time.sleep(poll_s)
    return prefix


def follow_stages(rank: int, world_size: int, device: torch.device) -> int:
    """A rank other than 0: train each stage rank 0 sends, until it sends None (the run ended, succeeded or
    not). Returns the number of stages trained; a SkillkdError of a stage (rank 0 raised it too, e.g. inputs
    that differ between ranks) is raised once rank 0 has ended the run."""
    trained, failed = 0, None
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            end_group()
            if failed is not None:
                raise failed
            return trained
        try:
            train_rank(box[0], rank, world_size, device, ignore_event, never_stop)
            trained += 1
        except StopRequested:
            pass  # rank 0 stopped the stage (every rank saw it at the same step); it says what comes next
        except SkillkdError as exc:
            failed = exc


def release_followers() -> None:
    """Rank 0, when the run ends however it ends: the other ranks stop waiting for stages; the group ends."""
    if dist.is_initialized():
        dist.broadcast_object_list([None], src=0)
        end_group()


def end_group() -> None:
    """Destroy the process group once nothing else holds it. Without the collection first, a process of a
    torchrun group sometimes died of SIGABRT at interpreter exit, its work done ("terminate called without an
    active exception", no Python frame) and torchrun reported the run failed: 1 run in 2 to 5 on a busy
    machine, none in 15 with it (tests/core/test_torchrun.py's commands). Our reading: the stages' objects
    (DistributedDataParallel and its reducer hold the group) sit in reference cycles, and the group's C++
    side was then destroyed during interpreter shutdown."""
    gc.collect()
    dist.destroy_process_group()


def _run_launched_stage(job: StageJob, on_event: OnEvent, should_stop: ShouldStop) -> dict[str, Any]:
    """Rank 0 of a launched group: send the stage to the other ranks and train rank 0's share here."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.broadcast_object_list([job], src=0)
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else None
    return train_rank(job, rank, world, device or torch.device("cpu"), on_event, should_stop)


def max_restarts() -> int:
    """How many times the elastic agent restarts a stage's group after a rank died (SKILLKD_MAX_RESTARTS)."""
    value = os.environ.get("SKILLKD_MAX_RESTARTS", "1")
    try:
        restarts = int(value)
    except ValueError:
        raise SkillkdError(f"SKILLKD_MAX_RESTARTS must be a whole number, got {value!r}") from None
    if restarts < 0:
        raise SkillkdError(f"SKILLKD_MAX_RESTARTS must be 0 or more, got {restarts}")
    return restarts


def _launch(job: StageJob, world_size: int, events: Any, stop: Any, failure: list[BaseException]) -> None:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent logs each rank's death with its stack and the restarts as warnings: the caller reports the
    # outcome in one line (and the resumed stage says from which step), so only its own errors pass.
    for name in ("torch.distributed.elastic", "torch.multiprocessing.spawn"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=f"skillkd-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        rdzv_configs={"is_host": True},
        max_restarts=max_restarts(),
        monitor_interval=0.2,
        start_method="spawn",
        local_addr="127.0.0.1",
        logs_specs=DefaultLogsSpecs(log_dir=str(Path(job.workdir) / job.stage / "ranks")),
    )
    try:
        with _may_start_processes():
            elastic_launch(config, _elastic_rank)(job, events, stop)
    except BaseException as exc:  # raised in the caller's thread
        failure.append(exc)


@contextmanager
def _may_start_processes() -> Iterator[None]:
    """Let this process start the ranks when it is a child of Celery's prefork pool, as the service's worker
    is: billiard's child is daemonic (multiprocessing refuses "daemonic processes are not allowed to have
    children": the rule keeps such children from outliving their parent, and ours die with it,
    `die_with_parent`), and its authentication key is billiard's, which the spawn start method refuses to
    send to a child ("Pickling an AuthenticationString object is disallowed"): the same key, as
    multiprocessing's type, for the launch."""
    import multiprocessing
    import multiprocessing.process

    process = (
        multiprocessing.current_process()
    )  # billiard's, in a Celery child: it replaces multiprocessing's
    daemonic, authkey = process.daemon, process.authkey
    if daemonic:
        process.daemon = False
    # billiard's authkey setter would wrap the key in its own type again: the process's config holds it
    process._config["authkey"] = multiprocessing.process.AuthenticationString(bytes(authkey))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        process._config["authkey"] = authkey  # type: ignore[attr-defined]
        if daemonic:
            process.daemon = True


def _launch_failure(stage: str, exc: BaseException, restarts: int, crashes: list[str]) -> SkillkdError:
    """What a failed launch says in one line: which ranks died how, after how many restarts; or why the
    ranks could not be started at all."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not isinstance(exc, ChildFailedError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return SkillkdError(
            f"{stage}: the training processes could not be started ({type(exc).__name__}: {first})"
        )
    deaths = [
        f"rank {rank}: " + (f"killed by {f.signal_name()}" if f.exitcode < 0 else f"exit code {f.exitcode}")
        for rank, f in sorted(exc.failures.items())
    ]
    seen = f"; {crashes[-1]}" if crashes else ""
    return SkillkdError(
        f"{stage}: a training process died ({'; '.join(deaths)}{seen}) and the group was restarted "
        f"{restarts} time(s) (SKILLKD_MAX_RESTARTS); the stage's last checkpoint is kept: resume the run"
    )


def run_parallel_stage(
    job: StageJob, world_size: int, on_event: OnEvent, should_stop: ShouldStop
) -> dict[str, Any]:
    """Run one training stage on `world_size` ranks; returns rank 0's summary. In a group a launcher
    started (torchrun), on its ranks; otherwise on `world_size` ranks started here by torch's elastic
    agent."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise SkillkdError(f"gpus={world_size} but the launched group has {dist.get_world_size()} ranks")
        return _run_launched_stage(job, on_event, should_stop)
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        raise SkillkdError(f"gpus={world_size} but only {torch.cuda.device_count()} CUDA devices are visible")
    restarts = max_restarts()
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    failure: list[BaseException] = []
    agent = threading.Thread(
        target=_launch,
        args=(job, world_size, events, stop, failure),
        name="skillkd-elastic-agent",
        daemon=True,
    )
    agent.start()
    result: dict[str, Any] | None = None
    outcome: tuple[str, Any] | None = None
    crashes: list[str] = []

    def take(kind: str, payload: Any) -> None:
        nonlocal result, outcome
        if kind == "event":
            on_event(Event(**payload))
        elif kind == "result":
            result = payload
        elif kind == "crash":
            crashes.append(payload)
        elif outcome is None:
            outcome = (kind, payload)

    try:
        while agent.is_alive():
            try:
                take(*events.get(timeout=0.2))
            except queue_mod.Empty:
                if not stop.is_set() and should_stop():
                    stop.set()
    except BaseException:  # the caller is going away (KeyboardInterrupt): the ranks save and stop first
        stop.set()
        agent.join(timeout=60)
        raise
    while True:  # anything sent after the last poll
        try:
            take(*events.get(timeout=0.05))
        except queue_mod.Empty:
            break
    if outcome is not None and outcome[0] == "stopped":
        raise StopRequested(str(outcome[1]))
    if outcome is not None:
        name, message = outcome[1]
        raise TrainingError(message) if name == "TrainingError" else SkillkdError(message)
    if failure:
        raise _launch_failure(job.stage, failure[0], restarts, crashes)
    if result is None:
        raise SkillkdError(f"{job.stage}: the training processes ended without a result")
    return result

"""The training loop of stage 1 (joint distillation + pruning) and stage 2 (distillation of the fixed
student).

Read top to bottom in numbered phases. The learning rate and the sparsity target are pure functions of the
step. A checkpoint holds everything needed to continue bit-for-bit on the same device: student (with masks),
projections, multipliers, optimiser, step, RNG states, data position and the loss log. The raw module is
saved, never a compiled or DDP wrapper.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.profiler import record_function

from core.data import Batch, WholeUtterances
from core.data.loader import BatchLoader, BatchStream, default_workers
from core.distill.quant_aware import Int8Aware
from core.distill.targets import ClusterTargets, HeadPass, distill_loss
from core.errors import CheckpointError, StopRequested, TrainingError
from core.events import Event, OnEvent, ShouldStop, ignore_event, never_stop
from core.models import SpeechEncoder
from core.models.latency import CostModel
from core.spec import Budget, TrainRecipe

CHECKPOINT = "checkpoint.pt"
STOP_POLL_EVERY = 5  # steps between should_stop() calls on CPU (a DB read in the service); 10 on GPU


def lr_factor(step: int, recipe: TrainRecipe) -> float:
    """Linear warmup to 1 over `warmup_steps`, then linear decay to 0 at `steps`."""
    if recipe.warmup_steps and step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    return max(0.0, 1.0 - (step - recipe.warmup_steps) / span)


def sparsity_target(step: int, final: float, recipe: TrainRecipe) -> float:
    """Ramps linearly from 0 to `final` over `sparsity_warmup_steps` (DPHuBERT), then stays."""
    if recipe.sparsity_warmup_steps <= 0:
        return final
    return final * min(1.0, step / recipe.sparsity_warmup_steps)


class Lagrangian(nn.Module):
    """lambda1 (s - t) + lambda2 (s - t)^2, minimised by the model and *maximised* over the multipliers.

    The ascent is explicit: `flip_gradients()` negates the multipliers' gradients before the optimiser step,
    so every parameter group uses an ordinary positive learning rate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def forward(self, expected_sparsity: Tensor, target: float) -> Tensor:
        gap = expected_sparsity - target
        return self.lambda1 * gap + self.lambda2 * gap * gap

    def flip_gradients(self) -> None:
        for p in (self.lambda1, self.lambda2):
            if p.grad is not None:
                p.grad.neg_()


@dataclass
class StageContext:
    """What a training stage needs besides its models."""

    workdir: Path
    recipe: TrainRecipe
    device: torch.device
    stage: str
    target_sparsity: float = 0.0  # shorthand for one params budget when `budgets` is None
    teacher_params: int = 0
    on_event: OnEvent = ignore_event
    should_stop: ShouldStop = never_stop
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    accumulation: int = 1  # batches each rank adds up per optimiser step (the global batch: world x this)
    compile: bool = False
    data_workers: int | None = None  # None: loader.default_workers
    budgets: list[Budget] | None = None  # stage 1's size constraints (params and/or MACs)
    macs_seconds: float = 10.0  # reference utterance length of the MACs count
    cost_model: CostModel | None = None  # a latency budget's predicted seconds (core.models.latency)
    whole: WholeUtterances | None = None  # a CTC head's transcribed utterances (`build.transcribed`)
    int8: Int8Aware | None = None  # stage 2's int8-aware rounding (core.distill.quant_aware), when on
    extra_state: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename: a crash mid-write never leaves a torn checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: the caller decides whether to restart the stage
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def average_across_ranks(tensors: list[Tensor], world_size: int) -> None:
    """Data parallel: average `tensors` in place over the ranks in one collective, flattened. The loop uses it
    for the logged values (the gradients are averaged by DistributedDataParallel during the backward;
    bench/ddp_throughput times it on gradients, as the engine once did after the backward). Every rank
    applies the same update to the same weights, masks and multipliers with the same optimiser state, so
    masks and lambdas stay in sync without being broadcast."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def _any_rank(flag: bool, ctx: StageContext, device: torch.device) -> bool:
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class _StudentSide(nn.Module):
    """What the ranks train, as one module for DistributedDataParallel: the student, its cluster projections
    and (with a task head) its copy of the teacher's head. The Lagrange multipliers are not in it: their
    gradients are functions of the masks alone, identical on every rank, so no rank needs another's."""

    def __init__(self, student: SpeechEncoder, targets: ClusterTargets, student_fn: Any) -> None:
        super().__init__()
        self.student, self.targets = student, targets
        self.student_fn = student_fn  # the student, or its torch.compile wrapper

    def forward(
        self, waveforms: Tensor, max_layer: int, raw: bool = False
    ) -> tuple[list[Tensor], HeadPass | None]:
        """(the cluster predictions, the task head's pass or None); `raw`: (the representations r0..r_max,
        None)."""
        reps, _ = self.student_fn(waveforms, None, max_layer=max_layer)
        if raw:
            return reps, None
        predictions = self.targets.student_predictions(reps)
        task = self.targets.task
        return predictions, task.student_pass(self.student, reps) if task is not None else None


def _no_buffer_sync() -> dict[str, Any]:
    """DDP's option not to broadcast buffers before each forward: `forward_sync_buffers` where this torch has
    it (2.13 deprecates `broadcast_buffers` with a warning), else `broadcast_buffers` (torch 2.11)."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {name: False}


class DistillStep:
    """One optimiser step of stage 1 or stage 2, shared by `train_stage` and `bench/distill_step.py`.

    Teacher forward in inference mode up to the highest target layer, student forward (masked in stage 1),
    distillation loss, Lagrangian on the expected sparsity (stage 1), backward (on several ranks through
    DistributedDataParallel: gradients averaged in buckets while the backward runs), the multipliers' ascent,
    clipping and AdamW; with `whole`, a CTC head's supervised pass on one whole transcribed utterance, with
    `int8` (int8-aware stage 2), its consistency pass, each with its own backward before the step's. Every
    figure it returns stays on the device: the caller decides when to read them (one host sync for many
    steps). Regions are labelled for `torch.profiler` (`teacher_forward`, `student_forward`, `loss`,
    `backward`, `optimizer`, `task_supervised`, `int8_consistency`).

    `compile=True` wraps teacher and student in `torch.compile(dynamic=True)` (batches change shape from step
    to step). A new `DistillStep` is built per stage, so the pruned student of stage 2 is compiled afresh; if
    compiling fails (no compiler, an unsupported op), the step reports it through `on_event` and continues
    eagerly rather than failing the job.
    """

    def __init__(
        self,
        student: SpeechEncoder,
        teacher: SpeechEncoder,
        targets: ClusterTargets,
        recipe: TrainRecipe,
        device: torch.device,
        *,
        target_sparsity: float = 0.0,
        teacher_params: int = 0,
        budgets: list[Budget] | None = None,
        macs_seconds: float = 10.0,
        cost_model: CostModel | None = None,
        world_size: int = 1,
        compile: bool = False,
        on_event: OnEvent = ignore_event,
        stage: str = "",
        whole: WholeUtterances | None = None,
        int8: Int8Aware | None = None,
    ) -> None:
        self.student, self.teacher, self.targets = student, teacher, targets
        self.int8 = int8 if int8 is not None and int8.consistency else None
        self.whole = whole  # `build.transcribed`: None without a CTC head's transcripts
        self.recipe, self.device = recipe, device
        if budgets is None:
            budgets = [Budget("params", float(teacher_params), target_sparsity)] if teacher_params else []
        self.budgets = {b.kind: b for b in budgets}
        self.macs_seconds = macs_seconds
        if "latency" in self.budgets and cost_model is None:
            raise ValueError("a latency budget needs the cost model that predicts the student's latency")
        self.cost_model = cost_model
        self.world_size = world_size
        self.pruning = student.config.has_masks
        self.on_event, self.stage = on_event, stage
        teacher.eval().requires_grad_(False)
        student.train()
        targets.train()
        # One pair of multipliers per constraint, each maximised over its own gap (algorithm.md §3).
        self.lagrangians = nn.ModuleDict({kind: Lagrangian() for kind in self.budgets}).to(device)
        groups: list[dict[str, Any]] = [
            {
                "params": student.weight_parameters() + [p for p in targets.parameters() if p.requires_grad],
                "lr": recipe.lr,
                "base_lr": recipe.lr,
            }
        ]
        if self.pruning:
            groups.append(
                {
                    "params": student.mask_parameters(),
                    "lr": recipe.lr_masks,
                    "base_lr": recipe.lr_masks,
                    "betas": tuple(recipe.mask_betas),
                }
            )
            groups.append(
                {
                    "params": list(self.lagrangians.parameters()),
                    "lr": recipe.lr_lambda,
                    "base_lr": recipe.lr_lambda,
                    "betas": tuple(recipe.lambda_betas),
                    "constant_lr": recipe.lambda_constant_lr,
                }
            )
        self.groups = groups
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0, fused=device.type == "cuda")
        self.clip_params = [p for g in groups[:2] for p in g["params"]]
        self.teacher_fn: Any = teacher
        self.student_fn: Any = student
        self.compiled = False
        if compile:
            self.teacher_fn = torch.compile(teacher, dynamic=True)
            self.student_fn = torch.compile(student, dynamic=True)
            self.compiled = True
        self.side = _StudentSide(student, targets, self.student_fn)
        self.ddp: Any = None
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.side,
                device_ids=[device.index] if device.type == "cuda" else None,
                **_no_buffer_sync(),  # the ranks start equal and stay equal (the same updates)
                # layers past the deepest target, and a pruned layer's empty attention or FFN (no head or unit
                # left: skipped), get no gradient; DDP must not wait for them
                find_unused_parameters=targets.max_layer < student.num_layers
                or any(p.numel() == 0 for p in student.parameters()),
            )

    def _eager_fallback(self, exc: Exception) -> None:
        self.teacher_fn, self.student_fn, self.compiled = self.teacher, self.student, False
        self.side.student_fn = self.student
        self.on_event(
            Event(
                "log",
                self.stage,
                message=(
                    f"torch.compile failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                    "continuing without it"
                ),
            )
        )

    def _forward(
        self, waveforms: Tensor
    ) -> tuple[list[Tensor], list[Tensor], tuple[HeadPass, HeadPass] | None]:
        """(predictions, targets, (student, teacher) task head passes or None without a task head)."""
        device, max_layer, task = self.device, self.targets.max_layer, self.targets.task
        taught: HeadPass | None = None
        with record_function("teacher_forward"), torch.inference_mode(), autocast(device):
            teacher_reps, _ = self.teacher_fn(waveforms, None, max_layer=max_layer)
            wanted = self.targets.teacher_targets(teacher_reps)
            if task is not None:
                taught = task.teacher_pass(self.teacher, teacher_reps)
        wanted = [t.clone().float() for t in wanted]  # leave inference mode: usable in autograd
        with record_function("student_forward"), autocast(device):
            predictions, student_pass = (self.ddp or self.side)(waveforms, max_layer)
            outputs = None
            if student_pass is not None and taught is not None:
                outputs = (student_pass, HeadPass(*(t.clone().float() for t in taught)))
        return predictions, wanted, outputs

    def __call__(
        self, step: int, waveforms: Tensor | Sequence[Tensor], ids: Sequence[Any] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, float], float]:
        """Run step `step` on `waveforms` (already on the device): one batch, or this rank's micro-batches of
        the step, whose gradients add up before the one optimiser update (`ids`: their utterance ids, a list
        per micro-batch, for a supervised task term). Returns (figures on the device, averaged over the
        micro-batches as over ranks; the sparsity targets of this step by name; lr factor).

        Each micro-batch's loss counts 1/n, so n micro-batches on one process give the update that n ranks
        with one each give; each draws the same mask sample from the same generator state, as the ranks do
        (they are seeded alike), and the generator ends where one forward leaves it."""
        recipe = self.recipe
        factor = lr_factor(step, recipe)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * (1.0 if g.get("constant_lr") else factor)
        parts = [waveforms] if isinstance(waveforms, Tensor) else list(waveforms)
        if ids is None:
            id_lists: list[list[str]] = [[] for _ in parts]
        elif isinstance(waveforms, Tensor):
            id_lists = [list(ids)]
        else:
            id_lists = [list(i) for i in ids]
        self.optimizer.zero_grad(set_to_none=True)
        rng = _device_rng(self.device) if len(parts) > 1 else None
        values: dict[str, Tensor] = {}
        targets_now: dict[str, float] = {}
        if self.whole is not None:
            values["task_supervised"] = self._transcribed_step(step)
        for k, (part, part_ids) in enumerate(zip(parts, id_lists, strict=True)):
            if rng is not None:
                _set_device_rng(self.device, rng)
            last = k == len(parts) - 1
            sync = nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            if self.int8 is not None:
                term = self._int8_consistency(part, len(parts)) / len(parts)
                values["int8_consistency"] = values.get("int8_consistency", 0.0) + term
            with sync:
                figures, targets_now = self._micro_step(step, part, part_ids, len(parts))
            for name, value in figures.items():
                values[name] = values[name] + value if name in values else value
        with record_function("optimizer"):
            if self.pruning:
                for lagrangian in self.lagrangians.values():
                    lagrangian.flip_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.clip_params, recipe.grad_clip)
            self.optimizer.step()
        values["grad_norm"] = grad_norm.detach()
        if self.pruning:
            for name, lagrangian in self.lagrangians.items():
                prefix = "" if name == "params" else f"{name}_"
                values[f"{prefix}lambda1"] = lagrangian.lambda1.detach()
                values[f"{prefix}lambda2"] = lagrangian.lambda2.detach()
        return values, targets_now, factor

    def _transcribed_step(self, step: int) -> Tensor:
        """A CTC head's supervised term: forward and backward of this step's whole labelled utterance
        (`whole`), its CTC loss weighted by `supervised_weight`, gradients added to the step's (on several
        ranks, kept local until the step's last micro-batch reduces them all). Returns the unweighted loss."""
        task, whole = self.targets.task, self.whole
        assert task is not None and whole is not None
        batch = whole.serve(step)
        sync = nullcontext() if self.ddp is None else self.ddp.no_sync()
        with sync, record_function("task_supervised"):
            with autocast(self.device):
                _, student_pass = (self.ddp or self.side)(
                    batch.waveforms.to(self.device, non_blocking=True), self.targets.max_layer
                )
            assert student_pass is not None
            loss = task.transcript_loss(student_pass.outputs, batch.ids)
            (task.supervised_weight * loss).backward()
        return loss.detach()

    def _int8_consistency(self, waveforms: Tensor, count: int) -> Tensor:
        """int8-aware stage 2's consistency term (`Int8Aware.consistency`) on one of the step's `count`
        micro-batches: the student's representations with every hooked tensor rounded pulled to its fp32 ones
        (detached), L1 - cosine, weighted and backpropagated at once (on several ranks kept local until the
        step's last micro-batch reduces them all). Returns the unweighted term."""
        int8 = self.int8
        assert int8 is not None
        layer = self.targets.max_layer
        with torch.no_grad(), int8.rounding(False), autocast(self.device):
            fp32, _ = self.student_fn(waveforms, None, max_layer=layer)
        sync = nullcontext() if self.ddp is None else self.ddp.no_sync()
        with sync, record_function("int8_consistency"):
            with int8.rounding(True), autocast(self.device):
                rounded, _ = (self.ddp or self.side)(waveforms, layer, raw=True)
            term = distill_loss(rounded, [r.float() for r in fp32])[0]
            (int8.consistency * term / count).backward()
        return term.detach()

    def _micro_step(
        self, step: int, waveforms: Tensor, ids: list[str], count: int
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Forward, loss and backward of one of the step's `count` micro-batches (its loss weighted 1/count,
        gradients added to the others'). Returns its figures, each already divided by `count`."""
        recipe = self.recipe
        if self.compiled:
            rng = torch.get_rng_state()
            try:
                predictions, wanted, task_outputs = self._forward(waveforms)
            except Exception as exc:  # compilation problems surface at the first call with a new shape
                torch.set_rng_state(rng)
                self._eager_fallback(exc)
                predictions, wanted, task_outputs = self._forward(waveforms)
        else:
            predictions, wanted, task_outputs = self._forward(waveforms)

        with record_function("loss"):
            loss, parts = distill_loss(predictions, wanted, weights=self.targets.weights)
            total = loss
            task_term: Tensor | None = None
            supervised: Tensor | None = None
            task_input: Tensor | None = None
            task = self.targets.task
            if task_outputs is not None and task is not None:
                student_pass, teacher_pass = task_outputs
                task_term = task.loss(student_pass.outputs, teacher_pass.outputs)
                total = total + task.weight * task_term
                task_input = task.input_loss(student_pass, teacher_pass)
                if task_input is not None:
                    total = total + task.input_weight * task_input
                supervised = task.supervised_loss(student_pass.outputs, ids)
                if supervised is not None:
                    total = total + task.supervised_weight * supervised
            targets_now: dict[str, float] = {}
            sizes: dict[str, Tensor] = {}
            if self.pruning:
                sizes = {"params": self.student.expected_num_params()}
                if "macs" in self.budgets:
                    sizes["macs"] = self.student.expected_macs(self.macs_seconds)
                if "latency" in self.budgets and self.cost_model is not None:
                    sizes["latency"] = self.cost_model.predict(self.student)
                for kind, budget in self.budgets.items():
                    t_kind = sparsity_target(step, budget.sparsity, recipe)
                    targets_now["target_sparsity" if kind == "params" else f"target_{kind}_sparsity"] = t_kind
                    total = total + self.lagrangians[kind](1.0 - sizes[kind] / budget.teacher, t_kind)

        with record_function("backward"):
            (total / count if count > 1 else total).backward()

        values = {
            "loss": total.detach(),
            "distill": loss.detach(),
            "l1": parts["l1"],
            "cos": parts["cos"],
        }
        if task_term is not None:
            values["task"] = task_term.detach()
        if task_input is not None:
            values["task_input"] = task_input.detach()
        if supervised is not None:
            values["task_supervised"] = supervised.detach()
        if self.pruning:
            values.update(expected_params=sizes["params"].detach())
            if "params" in self.budgets:
                values.update(sparsity=1.0 - sizes["params"].detach() / self.budgets["params"].teacher)
            if "macs" in sizes:
                values.update(
                    expected_macs=sizes["macs"].detach(),
                    macs_sparsity=1.0 - sizes["macs"].detach() / self.budgets["macs"].teacher,
                )
            if "latency" in sizes:
                values.update(
                    expected_latency=sizes["latency"].detach(),
                    latency_sparsity=1.0 - sizes["latency"].detach() / self.budgets["latency"].teacher,
                )
        if count > 1:
            values = {name: value / count for name, value in values.items()}
        return values, targets_now


def _device_rng(device: torch.device) -> Tensor:
    """The generator state that draws this device's random numbers (mask samples)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_rng(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class _StepFigures:
    """The steps' figures (losses, targets, learning rate). They stay on the device and are read (one host
    sync) at `flush`: every `sync_every` steps, before a checkpoint or stop check, and at the end, so on a GPU
    the next steps are queued meanwhile. A flush checks the loss for NaN, writes `train_log.jsonl` (main rank)
    and sends a progress event."""

    def __init__(self, ctx: StageContext, log_path: Path, start_step: int, sample_rate: int) -> None:
        self.ctx, self.start_step, self.sample_rate = ctx, start_step, sample_rate
        self.started = time.monotonic()
        self.last: dict[str, float] = {}
        self.names: list[str] = []
        self.audio_s = 0.0
        self.pending: list[tuple[int, Tensor, dict[str, float], float]] = []
        self.log = open(log_path, "a") if ctx.is_main else None  # noqa: SIM115 (closed in close())

    def add(
        self,
        step: int,
        batches: Sequence[Batch],
        values: dict[str, Tensor],
        targets_now: dict[str, float],
        factor: float,
    ) -> None:
        self.audio_s = sum(b.waveforms.numel() for b in batches) / self.sample_rate
        self.names = list(values)
        self.pending.append((step, torch.stack([v.float() for v in values.values()]), targets_now, factor))

    def flush(self, step: int) -> None:
        ctx, recipe = self.ctx, self.ctx.recipe
        rows = torch.stack([p[1] for p in self.pending])
        if ctx.world_size > 1:
            average_across_ranks([rows], ctx.world_size)
        rate = (step - self.start_step) / max(time.monotonic() - self.started, 1e-9)
        eta = (recipe.steps - step) / rate if rate > 0 else None
        for (at, _, target_now, lr_now), row in zip(self.pending, rows.tolist()):
            last = dict(zip(self.names, row))
            if not math.isfinite(last["loss"]):
                raise TrainingError(f"{ctx.stage}: loss became {last['loss']} at step {at}")
            last.update(target_now)
            last["lr"] = recipe.lr * lr_now
            last["audio_s_per_s"] = self.audio_s * rate * ctx.world_size
            if self.log is not None:
                self.log.write(json.dumps({"step": at, **last}) + "\n")
            self.last = last
        self.pending.clear()
        if self.log is not None:
            self.log.flush()
        if ctx.is_main:
            ctx.on_event(Event("progress", ctx.stage, step, recipe.steps, eta, dict(self.last)))

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _resume(runner: DistillStep, batches: BatchStream, ctx: StageContext, log_path: Path) -> int:
    """The step to start from: a checkpoint's (its state loaded into every part, the log cut back to it), or 0
    (seeded alike on every rank: mask samples must be identical across data-parallel ranks)."""
    ckpt_path = ctx.workdir / CHECKPOINT
    if not ckpt_path.exists():
        torch.manual_seed(ctx.seed)
        if ctx.is_main:
            log_path.unlink(missing_ok=True)
        return 0
    state = load_checkpoint(ckpt_path)
    runner.student.load_state_dict(state["student"])
    runner.targets.load_state_dict(state["targets"])
    runner.lagrangians.load_state_dict(state["lagrangians"])
    runner.optimizer.load_state_dict(state["optimizer"])
    batches.load_state_dict(state["batches"])
    _set_rng_state(state["rng"])
    step = int(state["step"])
    _truncate_log(log_path, step)
    message = f"resumed at step {step}"
    saved = state["batches"]
    if saved.get("world_size", ctx.world_size) != ctx.world_size:
        message += (
            f" on {ctx.world_size} process(es) x {ctx.accumulation} accumulated batch(es) per step (saved on "
            f"{saved['world_size']} x {saved.get('accumulation', 1)}: the same global batch)"
        )
    ctx.on_event(Event("log", ctx.stage, step, ctx.recipe.steps, message=message))
    return step


def _save(runner: DistillStep, batches: BatchStream, ctx: StageContext, step: int) -> None:
    """The stage's checkpoint (main rank only): everything `_resume` needs to continue exactly."""
    if not ctx.is_main:
        return
    atomic_save(
        {
            "step": step,
            "student": runner.student.state_dict(),
            "targets": runner.targets.state_dict(),
            "lagrangians": runner.lagrangians.state_dict(),
            "optimizer": runner.optimizer.state_dict(),
            "batches": batches.state_dict(),
            "rng": _rng_state(),
            "config": runner.student.config.to_dict(),
            "recipe": ctx.recipe.model_dump(),
            **ctx.extra_state,
        },
        ctx.workdir / CHECKPOINT,
    )


def train_stage(
    student: SpeechEncoder,
    teacher: SpeechEncoder,
    targets: ClusterTargets,
    batches: BatchStream,
    ctx: StageContext,
) -> dict[str, Any]:
    """Run (or resume) one training stage in `ctx.workdir`; returns a summary. Raises StopRequested when
    `ctx.should_stop()` says so, after saving a checkpoint."""
    recipe, device = ctx.recipe, ctx.device
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    log_path = ctx.workdir / "train_log.jsonl"
    runner = DistillStep(
        student,
        teacher,
        targets,
        recipe,
        device,
        target_sparsity=ctx.target_sparsity,
        teacher_params=ctx.teacher_params,
        budgets=ctx.budgets,
        macs_seconds=ctx.macs_seconds,
        cost_model=ctx.cost_model,
        world_size=ctx.world_size,
        compile=ctx.compile,
        on_event=ctx.on_event if ctx.is_main else ignore_event,
        stage=ctx.stage,
        whole=ctx.whole,
        int8=ctx.int8,
    )
    planned = getattr(batches, "accumulation", ctx.accumulation)
    if planned != ctx.accumulation:
        raise ValueError(f"the batches are planned for {planned} per step, the stage adds {ctx.accumulation}")
    step = _resume(runner, batches, ctx, log_path)

    workers = default_workers(device, ctx.world_size) if ctx.data_workers is None else ctx.data_workers
    loader = BatchLoader(batches, workers=workers, pin_memory=device.type == "cuda")
    data: Iterator[Batch] = iter(loader)
    figures = _StepFigures(ctx, log_path, step, student.config.sample_rate)
    sync_every = 1 if device.type == "cpu" else 10
    # A stop check on several ranks is a collective with a host read: on a GPU it waits for the figures' read.
    poll_every = STOP_POLL_EVERY if device.type == "cpu" else max(STOP_POLL_EVERY, sync_every)
    try:
        while step < recipe.steps:
            micro = [next(data) for _ in range(ctx.accumulation)]
            values, targets_now, factor = runner(
                step, [b.waveforms.to(device, non_blocking=True) for b in micro], [b.ids for b in micro]
            )
            step += 1
            figures.add(step, micro, values, targets_now, factor)
            checkpoint_now = step % recipe.checkpoint_every == 0 and step < recipe.steps
            poll_now = step % poll_every == 0 and step < recipe.steps
            if step % sync_every == 0 or checkpoint_now or poll_now or step == recipe.steps:
                figures.flush(step)
            if checkpoint_now:
                _save(runner, batches, ctx, step)
            if poll_now and _any_rank(ctx.is_main and ctx.should_stop(), ctx, device):
                _save(runner, batches, ctx, step)
                raise StopRequested(f"stopped at step {step} of {ctx.stage}; the checkpoint was saved")
    finally:
        loader.close()
        figures.close()

    _save(runner, batches, ctx, step)
    return {"steps": step, "final": figures.last, "seconds": time.monotonic() - figures.started}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))

"""Distillation step benchmark: the cost of one optimiser step of stage 1 (distillation + pruning) and of
stage 2 (distillation of the pruned student), on random-init `tiny` and Base-size HuBERT / WavLM encoders.

    python -m bench.distill_step --size tiny                              # CPU, seconds
    python -m bench.distill_step --size base --arch hubert --steps 1      # CPU, minutes (slow)
    python -m bench.distill_step --size all --device cuda --json bench/results/distill_step_gpu.json

One step is what `core.distill.train.train_stage` does per step: the same `core.distill.train.DistillStep`
(teacher forward in inference mode up to the highest target layer, student forward (masked in stage 1) and
backward, the Lagrangian on the expected sparsity (stage 1), AdamW over the same parameter groups, gradient
clipping), and the loop's host synchronisation for the logged values. Checkpointing and logging are left out.

`--profile` adds a per-step profile of each case (torch.profiler): time per region of the step
(`teacher_forward`, `student_forward`, `loss`, `backward`, `optimizer`, on the host and on the device) and
the operators that take most of it.

On CUDA it also times a "plain" step (issue #5): transformers' `HubertModel` / `WavLMModel` at the same
size, teacher in inference mode with `output_hidden_states`, full-size student forward + backward with
L1 - cosine on four hidden states, fused AdamW and clipping, so "ours / plain" is measured in the same run.

FLOPs are analytic (multiply-accumulates of convs, linears and attention matmuls, x2), per step:
teacher forward + 3 x student forward (forward + backward). See `forward_macs` and `step_flops`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.distill.targets import ClusterTargets, distill_loss
from core.distill.train import DistillStep, autocast
from core.estimate import default_clusters, keep_fraction
from core.models import ConvConfig, LayerConfig, ModelConfig, SpeechEncoder, build_model, make_student
from core.spec import DEFAULT_SPARSITY, CompressionSpec, TrainRecipe

SAMPLE_RATE = 16_000
STANDARD_KERNELS = (10, 3, 3, 3, 3, 2, 2)
STANDARD_STRIDES = (5, 2, 2, 2, 2, 2, 2)
# Paper recipe (DPHuBERT / SKILL): 4 GPUs x 160 s = 640 s of audio per optimiser step.
PAPER_AUDIO_S_PER_STEP = 640.0
PAPER_STAGE1_STEPS = 50_000
PAPER_STAGE2_STEPS = 25_000
PAPER_A100_GPU_HOURS = 24.0  # DPHuBERT's reported cost (18 h stage 1 + 6 h stage 2)
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by device-name substring; first match wins.
BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
]
CPU_BASE_MAX_STEPS = 2
STAGE2_KEEP_FRACTION = 0.25  # stage-2 student: ~75% of conv channels, heads and FFN units removed


# ------------------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------------------
def model_config(size: str, arch: str) -> ModelConfig:
    """Random-init architecture: `tiny` (64 wide, 2 layers) or the real Base size (94-95M parameters)."""
    if size == "tiny":
        conv = [ConvConfig(32, k, s) for k, s in zip(STANDARD_KERNELS, STANDARD_STRIDES, strict=True)]
        return ModelConfig(
            architecture=arch,
            conv=conv,
            layers=[LayerConfig(4, 128) for _ in range(2)],  # type: ignore[arg-type]
            hidden_size=64,
            head_dim=16,
            pos_conv_kernel=16,
            pos_conv_groups=4,
        )
    if size == "base":
        conv = [ConvConfig(512, k, s) for k, s in zip(STANDARD_KERNELS, STANDARD_STRIDES, strict=True)]
        return ModelConfig(
            architecture=arch,
            conv=conv,
            layers=[LayerConfig(12, 3072) for _ in range(12)],  # type: ignore[arg-type]
            hidden_size=768,
            head_dim=64,
            pos_conv_kernel=128,
            pos_conv_groups=16,
        )
    raise ValueError(f"unknown size {size!r}")


# ------------------------------------------------------------------------------------------------------------
# Analytic FLOPs
# ------------------------------------------------------------------------------------------------------------
def forward_macs(
    model: SpeechEncoder, batch: int, samples: int, max_layer: int | None = None, num_projections: int = 0
) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of `model` (without masks) over (batch, samples), by part.

    Per utterance this is core's count, `SpeechEncoder.macs_by_part` (what `core.evaluation.MacCounter`
    counts: conv extractor, feature projection, positional conv, attention with q/k/v/out, the two T² products
    and WavLM's gate, FFN; element-wise work left out), at each layer's real width, so a pruned student is
    counted at its size. Core gives MACs per second of audio of one utterance of the encoder; a training step
    runs more, which the bench adds: the whole batch, only the layers up to `max_layer` (the teacher stops at
    the highest target layer) and `num_projections` Linear(D, D) target projections.
    """
    if model.hard_concretes():  # a masked model's count is its expected size, not the work its forward does
        raise ValueError("forward_macs counts a model without masks (for a masked student: its teacher)")
    seconds = samples / model.config.sample_rate
    per_second = model.macs_by_part(seconds)

    def per_batch(value: float) -> int:  # core's figure is per second of audio: one utterance's, x batch
        return batch * round(value * seconds)

    layers = per_second["layers"] if max_layer is None else per_second["layers"][:max_layer]
    frames = model.conv_frames(samples)[-1]
    d = model.config.hidden_size
    return {
        "conv": sum(per_batch(x) for x in per_second["conv"]),
        "projection": per_batch(per_second["feature_projection"]),
        "pos_conv": per_batch(per_second["positional_conv"]),
        "attention": sum(per_batch(layer["attention"]) for layer in layers),
        "ffn": sum(per_batch(layer["ffn"]) for layer in layers),
        "targets": num_projections * batch * frames * d * d,  # the step's target heads, not in the encoder
    }


def step_flops(
    teacher: SpeechEncoder,
    student: SpeechEncoder,
    batch: int,
    samples: int,
    max_layer: int,
    num_projections: int,
) -> dict[str, int]:
    """FLOPs of one training step, which core does not count: teacher forward + 3 x student forward
    (backward ~ 2 x forward); FLOPs = 2 MACs. `student` without masks (stage 1: the teacher, same size)."""
    teacher_macs = sum(forward_macs(teacher, batch, samples, max_layer).values())
    student_macs = sum(forward_macs(student, batch, samples, max_layer, num_projections).values())
    return {
        "teacher_forward": 2 * teacher_macs,
        "student_forward": 2 * student_macs,
        "total": 2 * teacher_macs + 3 * 2 * student_macs,
    }


def bf16_peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return name, peak
    return name, None


# ------------------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------------------
def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so that an RSS delta is not hidden by memory an earlier
    case freed but the allocator kept."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of one case. CUDA: torch.cuda.max_memory_allocated (absolute: teacher, student, optimiser
    state, activations). CPU: resident set size sampled every 10 ms from /proc/self/statm, peak during the
    case minus the RSS before its student was built (so the teacher's weights are excluded; freed memory is
    handed back with glibc's malloc_trim first); falls back to the
    ru_maxrss delta where /proc is missing (0 if an earlier case peaked higher)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_rss: int | None = None
        self._start_maxrss = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_memory_allocated"
            return self
        gc.collect()
        _malloc_trim()
        self._start_rss = _rss_bytes()
        self._start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if self._start_rss is None:
            self.method = "cpu_ru_maxrss_delta"
            return self
        self.method = "cpu_rss_peak_delta_sampled_10ms"
        self.peak = self._start_rss

        def sample() -> None:
            while not self._stop.wait(0.01):
                rss = _rss_bytes()
                if rss is not None and rss > self.peak:
                    self.peak = rss

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes() or 0
            self.peak = max(self.peak, rss) - (self._start_rss or 0)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._start_maxrss


# ------------------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    size: str
    arch: str
    stage: str  # stage1 | stage2 | plain
    batch_seconds: float
    utterance_seconds: float

    @property
    def batch(self) -> int:
        return max(1, round(self.batch_seconds / self.utterance_seconds))

    @property
    def samples(self) -> int:
        return int(round(self.utterance_seconds * SAMPLE_RATE))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maybe_compile(module: nn.Module, enabled: bool) -> Callable[..., Any]:
    return torch.compile(module, dynamic=True) if enabled else module  # type: ignore[return-value]


class OursStep:
    """One step of `core.distill.train.train_stage`: its `DistillStep`, then the loop's host sync of the
    logged values (the loop does that once per 10 steps on a GPU; here once per step, so this is slightly
    pessimistic)."""

    def __init__(
        self,
        teacher: SpeechEncoder,
        student: SpeechEncoder,
        targets: ClusterTargets,
        recipe: TrainRecipe,
        device: torch.device,
        teacher_params: int,
        compile_models: bool,
        compiled_teacher: Callable[..., Any] | None = None,
    ) -> None:
        self.student = student
        self.inner = DistillStep(
            student,
            teacher,
            targets,
            recipe,
            device,
            target_sparsity=DEFAULT_SPARSITY,
            teacher_params=teacher_params,
            compile=False,
        )
        if compile_models:  # the teacher is compiled once per architecture and shared by the cases
            self.inner.student_fn = _maybe_compile(student, True)
            self.inner.teacher_fn = compiled_teacher if compiled_teacher is not None else teacher
            self.inner.compiled = True
        self.step_index = 0

    def __call__(self, waveforms: Tensor) -> dict[str, float]:
        values, _, _ = self.inner(self.step_index, waveforms)
        self.step_index += 1
        floats = torch.stack([v.float() for v in values.values()]).tolist()
        return dict(zip(values, floats, strict=True))


def plain_layers(num_layers: int) -> list[int]:
    """hidden_states indices of the plain baseline: L/3, 2L/3, L (4, 8, 12 for Base); plus the last output."""
    return [max(1, round(num_layers / 3)), max(1, round(2 * num_layers / 3)), num_layers]


def hf_config(config: ModelConfig) -> Any:
    """transformers config of the same size as `config` (dropouts, layerdrop and SpecAugment off)."""
    from transformers import HubertConfig, WavLMConfig

    kw: dict[str, Any] = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.layers[0].num_heads,
        intermediate_size=config.layers[0].ffn_dim,
        conv_dim=tuple(c.out_channels for c in config.conv),
        conv_kernel=tuple(c.kernel for c in config.conv),
        conv_stride=tuple(c.stride for c in config.conv),
        num_conv_pos_embeddings=config.pos_conv_kernel,
        num_conv_pos_embedding_groups=config.pos_conv_groups,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        apply_spec_augment=False,
    )
    if config.architecture == "wavlm":
        cfg = WavLMConfig(num_buckets=config.num_buckets, max_bucket_distance=config.max_distance, **kw)
        cfg._attn_implementation = "eager"  # transformers' WavLM has no SDPA path
    else:
        cfg = HubertConfig(**kw)
        cfg._attn_implementation = "sdpa"
    return cfg


class PlainStep:
    """Issue #5's baseline: transformers model, full-size student, L1 - cos on 4 hidden states."""

    def __init__(self, config: ModelConfig, device: torch.device, compile_models: bool) -> None:
        from transformers import HubertModel, WavLMModel

        cls = WavLMModel if config.architecture == "wavlm" else HubertModel
        self.teacher = cls(hf_config(config)).to(device).eval().requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.teacher_fn = _maybe_compile(self.teacher, compile_models)
        self.student_fn = _maybe_compile(self.student, compile_models)
        d = config.hidden_size
        self.layers = plain_layers(config.num_layers)
        self.projections = nn.ModuleList(nn.Linear(d, d) for _ in range(len(self.layers) + 1)).to(device)
        for p in self.projections:
            nn.init.eye_(p.weight)
            nn.init.zeros_(p.bias)
        self.params = list(self.student.parameters()) + list(self.projections.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=2e-4, weight_decay=0.0, fused=device.type == "cuda"
        )
        self.device = device

    def _select(self, out: Any) -> list[Tensor]:
        return [out.hidden_states[i] for i in self.layers] + [out.last_hidden_state]

    def __call__(self, waveforms: Tensor) -> dict[str, float]:
        with torch.inference_mode(), autocast(self.device):
            wanted = self._select(self.teacher_fn(waveforms, output_hidden_states=True))
        wanted = [t.clone().float() for t in wanted]
        with autocast(self.device):
            hidden = self._select(self.student_fn(waveforms, output_hidden_states=True))
            predictions = [proj(h) for proj, h in zip(self.projections, hidden, strict=True)]
        loss, _ = distill_loss(predictions, wanted)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 10.0)
        self.optimizer.step()
        return {"loss": float(loss.detach())}


# ------------------------------------------------------------------------------------------------------------
# Runner
# ------------------------------------------------------------------------------------------------------------
def time_steps(
    step: Callable[[Tensor], dict[str, float]],
    waveforms: Tensor,
    steps: int,
    warmup: int,
    device: torch.device,
) -> tuple[list[float], dict[str, float]]:
    last: dict[str, float] = {}
    for _ in range(warmup):
        last = step(waveforms)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        last = step(waveforms)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, last


REGIONS = ("teacher_forward", "student_forward", "loss", "backward", "optimizer")


def profile_steps(
    step: Callable[[Tensor], dict[str, float]],
    waveforms: Tensor,
    device: torch.device,
    steps: int = 3,
    top: int = 12,
) -> dict[str, Any]:
    """Per-step profile (torch.profiler) of `steps` already warmed-up steps: milliseconds per step in each
    labelled region of `DistillStep` (host and device time), and the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    wall = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(waveforms)
        _sync(device)
    wall = (time.perf_counter() - wall) / steps

    def device_ms(e: Any, self_only: bool) -> float:
        name = ("self_" if self_only else "") + "device_time_total"
        legacy = ("self_" if self_only else "") + "cuda_time_total"
        return float(getattr(e, name, getattr(e, legacy, 0.0)) or 0.0) / 1000.0 / steps

    averages = prof.key_averages()
    regions = {
        e.key: {"host_ms": e.cpu_time_total / 1000.0 / steps, "device_ms": device_ms(e, False)}
        for e in averages
        if e.key in REGIONS
    }
    on_device = device.type == "cuda"
    ops = [e for e in averages if e.key not in REGIONS and not e.key.startswith("ProfilerStep")]
    ops.sort(key=lambda e: device_ms(e, True) if on_device else e.self_cpu_time_total, reverse=True)
    top_ops = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_ms": device_ms(e, True) if on_device else e.self_cpu_time_total / 1000.0 / steps,
        }
        for e in ops[:top]
    ]
    return {
        "steps": steps,
        "wall_ms_per_step": 1000.0 * wall,
        "regions": {k: regions[k] for k in REGIONS if k in regions},
        "top_ops": top_ops,
        "time_basis": "device (CUDA kernels)" if on_device else "host (CPU)",
    }


def _waveforms(case: Case, device: torch.device, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(case.batch, case.samples, generator=generator)).to(device)  # (batch, time)


def run_case(
    case: Case,
    teacher: SpeechEncoder,
    teacher_fn: Callable[..., Any] | None,
    args: argparse.Namespace,
    device: torch.device,
    peak_tflops: float | None,
) -> dict[str, Any]:
    """One case; `teacher` is the bench's encoder of the case's size (the plain step builds its own
    transformers models and uses it only to count FLOPs), `teacher_fn` the callable the step runs."""
    cfg = model_config(case.size, case.arch)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    result: dict[str, Any] = {
        "size": case.size,
        "arch": case.arch,
        "stage": case.stage,
        "batch_seconds": case.batch_seconds,
        "utterance_seconds": case.utterance_seconds,
        "batch": case.batch,
        "samples": case.samples,
        "frames": teacher.conv_frames(case.samples)[-1],
        "audio_seconds": case.batch * case.samples / SAMPLE_RATE,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile": args.compile,
    }
    waveforms = _waveforms(case, device)
    with PeakMemory(device) as memory:
        torch.manual_seed(0)
        if case.stage == "plain":
            step: Callable[[Tensor], dict[str, float]] = PlainStep(cfg, device, args.compile)
            counted = teacher  # the transformers student has the teacher's architecture
            max_layer = cfg.num_layers
            n_proj = len(plain_layers(cfg.num_layers)) + 1
            result["targets"] = {"hidden_states": plain_layers(cfg.num_layers), "plus": "last_hidden_state"}
            result["student_params"] = sum(p.numel() for p in step.student.parameters())  # type: ignore[attr-defined]
            result["attention"] = "eager" if case.arch == "wavlm" else "sdpa"
        else:
            student = make_student(teacher)
            spec = CompressionSpec(preset="paper")
            if case.stage == "stage2":
                # a step's cost depends on how many units are kept, not which: core's keep_fraction (the
                # first ones) gives the sizes the bench's random choice gave, so the same figures
                keep_fraction(student, STAGE2_KEEP_FRACTION)
                student.prune()
                student.train()
            recipe = spec.recipe(1 if case.stage == "stage1" else 2)
            clusters = default_clusters(spec, cfg.num_layers)
            targets = ClusterTargets(clusters, cfg.hidden_size).to(device)
            step = OursStep(
                teacher, student, targets, recipe, device, teacher_params, args.compile, teacher_fn
            )
            counted = teacher if case.stage == "stage1" else student  # a masked student runs at full size
            max_layer = targets.max_layer
            n_proj = len(targets.projections)
            result["clusters"] = clusters
            result["student_params"] = student.num_params()
            result["teacher_params"] = teacher_params
            if case.stage == "stage2":
                result["student_sparsity"] = 1.0 - student.num_params() / teacher_params
        times, last = time_steps(step, waveforms, args.steps, args.warmup, device)
        if args.profile:
            result["profile"] = profile_steps(step, waveforms, device, steps=min(3, args.steps))
    del step
    flops = step_flops(teacher, counted, case.batch, case.samples, max_layer, n_proj)
    step_time = statistics.median(times)
    tflops = flops["total"] / step_time / 1e12
    result.update(
        step_times_s=[round(t, 6) for t in times],
        step_time_s=step_time,
        audio_s_per_s=result["audio_seconds"] / step_time,
        peak_memory_bytes=int(memory.peak),
        memory_method=memory.method,
        flops_per_step=flops["total"],
        flops_breakdown=flops,
        tflops=tflops,
        peak_fraction=tflops / peak_tflops if peak_tflops else None,
        last_values=last,
    )
    return result


def _warm_process(device: torch.device) -> None:
    """Load the kernels' one-off state (oneDNN, autograd engine, optimiser) before the first case, so that its
    memory figure does not carry ~100 MiB of process start-up."""
    x = torch.randn(2, 1, 800, device=device, requires_grad=True)
    w = torch.randn(4, 1, 10, device=device, requires_grad=True)
    q = torch.randn(1, 2, 8, 4, device=device, requires_grad=True)
    y = torch.nn.functional.conv1d(x, w, stride=5)
    z = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    (y.sum() + z.sum()).backward()
    torch.optim.AdamW([w], lr=1e-3, fused=device.type == "cuda").step()
    _cleanup(device)


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def estimates(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paper recipe cost from the measured rates: (50k x 640 s / stage-1 rate + 25k x 640 s / stage-2 rate)
    / 3600, in device-hours of the measured device (DPHuBERT reports ~24 A100 GPU-hours)."""
    out = []
    by_key = {
        (c["size"], c["arch"], c["batch_seconds"], c["stage"]): c for c in cases if "audio_s_per_s" in c
    }
    for (size, arch, batch_s, stage), c1 in by_key.items():
        c2 = by_key.get((size, arch, batch_s, "stage2"))
        if stage != "stage1" or c2 is None:
            continue
        seconds = (
            PAPER_STAGE1_STEPS * PAPER_AUDIO_S_PER_STEP / c1["audio_s_per_s"]
            + PAPER_STAGE2_STEPS * PAPER_AUDIO_S_PER_STEP / c2["audio_s_per_s"]
        )
        out.append(
            {
                "size": size,
                "arch": arch,
                "batch_seconds": batch_s,
                "stage1_audio_s_per_s": c1["audio_s_per_s"],
                "stage2_audio_s_per_s": c2["audio_s_per_s"],
                "paper_recipe_device_hours": seconds / 3600.0,
                "at_recipe_batch": batch_s == 160.0,
            }
        )
    return out


def ratios(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    by_key = {(c["size"], c["arch"], c["batch_seconds"], c["stage"]): c for c in cases if "step_time_s" in c}
    for (size, arch, batch_s, stage), plain in by_key.items():
        ours = by_key.get((size, arch, batch_s, "stage1"))
        if stage != "plain" or ours is None:
            continue
        out.append(
            {
                "size": size,
                "arch": arch,
                "batch_seconds": batch_s,
                "ours_stage1_step_s": ours["step_time_s"],
                "plain_step_s": plain["step_time_s"],
                "ours_over_plain_step_time": ours["step_time_s"] / plain["step_time_s"],
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------------------
def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_table(report: dict[str, Any]) -> str:
    lines = []
    head = (
        f"{'size':<5} {'arch':<6} {'stage':<7} {'batch':>11} {'step':>10} {'audio s/s':>10} "
        f"{'peak mem':>10} {'TFLOP/step':>10} {'TFLOP/s':>8} {'of peak':>7}"
    )
    lines += [head, "-" * len(head)]
    for c in report["cases"]:
        batch = f"{c['batch']}x{c['utterance_seconds']:g}s"
        if "error" in c:
            lines.append(f"{c['size']:<5} {c['arch']:<6} {c['stage']:<7} {batch:>11}  ERROR: {c['error']}")
            continue
        frac = f"{100 * c['peak_fraction']:.1f}%" if c.get("peak_fraction") else "-"
        lines.append(
            f"{c['size']:<5} {c['arch']:<6} {c['stage']:<7} {batch:>11} {1000 * c['step_time_s']:>8.1f}ms "
            f"{c['audio_s_per_s']:>10.1f} {_fmt_bytes(c['peak_memory_bytes']):>10} "
            f"{c['flops_per_step'] / 1e12:>10.4f} {c['tflops']:>8.3f} {frac:>7}"
        )
    if report["estimates"]:
        lines += ["", "Paper recipe (50k + 25k steps x 640 s of audio) on this device, from the rates above:"]
        for e in report["estimates"]:
            note = "" if e["at_recipe_batch"] else f" (measured at {e['batch_seconds']:g} s/step, recipe 160)"
            lines.append(
                f"  {e['size']:<5} {e['arch']:<6} {e['paper_recipe_device_hours']:>10.1f} device-hours"
                f"{note}   [DPHuBERT: ~{PAPER_A100_GPU_HOURS:g} A100 GPU-hours]"
            )
    if report["ratios"]:
        lines += ["", "Ours (stage 1, masked) / plain transformers step, same run:"]
        for r in report["ratios"]:
            lines.append(
                f"  {r['size']:<5} {r['arch']:<6} {r['batch_seconds']:>5g} s  "
                f"{r['ours_over_plain_step_time']:.2f}x  ({1000 * r['ours_stage1_step_s']:.1f} ms vs "
                f"{1000 * r['plain_step_s']:.1f} ms)"
            )
    for c in report["cases"]:
        profile = c.get("profile")
        if not profile:
            continue
        lines += [
            "",
            f"Profile {c['size']}/{c['arch']}/{c['stage']}/{c['batch_seconds']:g}s "
            f"({profile['wall_ms_per_step']:.1f} ms/step wall while profiled; ms per step):",
        ]
        for name, r in profile["regions"].items():
            on_device = (
                f"   device {r['device_ms']:>9.1f}" if profile["time_basis"].startswith("device") else ""
            )
            lines.append(f"  {name:<16} host {r['host_ms']:>9.1f}{on_device}")
        lines.append(f"  top operators by self time ({profile['time_basis']}):")
        for op in profile["top_ops"]:
            lines.append(f"    {op['self_ms']:>9.2f}  {op['calls_per_step']:>6.0f}x  {op['op'][:60]}")
    lines.append("")
    lines.append(f"peak memory: {report['settings']['memory_method']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=["tiny", "base", "all"], default="tiny")
    p.add_argument("--arch", choices=["hubert", "wavlm", "all"], default="all")
    p.add_argument(
        "--batch-seconds",
        type=float,
        nargs="+",
        default=None,
        help="audio seconds per step, one case each (default: CPU 8; GPU 160 40)",
    )
    p.add_argument(
        "--utterance-seconds", type=float, default=None, help="per utterance (default: CPU 4, GPU 10)"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: CPU 3, GPU 10)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 1; 3 with --compile)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher and the students")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile 3 steps per case: time per step region and the top operators",
    )
    p.add_argument(
        "--plain",
        choices=["auto", "on", "off"],
        default="auto",
        help="transformers baseline step (auto: on CUDA only)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads for this run (default: torch's). On an oversubscribed "
        "shared CPU use 1, or OMP_WAIT_POLICY=PASSIVE: OpenMP spin-waiting stalls otherwise",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.batch_seconds is None:
        args.batch_seconds = [160.0, 40.0] if gpu else [8.0]
    if args.utterance_seconds is None:
        args.utterance_seconds = 10.0 if gpu else 4.0
    if args.steps is None:
        args.steps = 10 if gpu else 3
    if args.warmup is None:
        args.warmup = 3 if args.compile else 1
    if args.steps < 1 or args.warmup < 0 or args.utterance_seconds <= 0 or min(args.batch_seconds) <= 0:
        p.error("need --steps >= 1, --warmup >= 0 and positive durations")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    device = torch.device(args.device)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    sizes = ["tiny", "base"] if args.size == "all" else [args.size]
    archs = ["hubert", "wavlm"] if args.arch == "all" else [args.arch]
    plain = args.plain == "on" or (args.plain == "auto" and device.type == "cuda")
    device_name, peak = bf16_peak_tflops(device)
    requested_steps, requested_warmup = args.steps, args.warmup

    memory_method = {
        "cuda": "torch.cuda.max_memory_allocated, absolute (teacher + student + optimiser + activations)"
    }.get(
        device.type,
        "CPU resident set size sampled every 10 ms (/proc/self/statm): peak during the case minus "
        "the RSS before its student was built (teacher weights excluded; malloc_trim first)",
    )

    def build_report(cases: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        report = {
            "benchmark": "distill_step",
            "command": "python -m bench.distill_step " + " ".join(sys.argv[1:] if argv is None else argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": complete,
            "machine": {
                "device": device.type,
                "device_name": device_name,
                "bf16_peak_tflops": peak,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "platform": platform.platform(),
                "env": {
                    k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                },
                "load_average_start": load_start,
                "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                "process_ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            },
            "settings": {
                "sizes": sizes,
                "archs": archs,
                "batch_seconds": args.batch_seconds,
                "utterance_seconds": args.utterance_seconds,
                "steps": requested_steps,
                "warmup": requested_warmup,
                "compile": args.compile,
                "profile": args.profile,
                "plain": plain,
                "autocast": "bf16" if device.type == "cuda" else "fp32",
                "stage2_keep_fraction": STAGE2_KEEP_FRACTION,
                "memory_method": memory_method,
                "flops": "analytic: 2 x MACs of (teacher forward + 3 x student forward); convs, linears, "
                "attention matmuls; element-wise work not counted",
            },
            "cases": cases,
            "estimates": estimates(cases),
            "ratios": ratios(cases),
        }
        if args.json is not None:  # after every case: a run cut short by a time limit keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        return report

    _warm_process(device)
    cases: list[dict[str, Any]] = []
    for size in sizes:
        args.steps, args.warmup = requested_steps, requested_warmup
        if size == "base" and device.type == "cpu":
            args.steps = min(args.steps, CPU_BASE_MAX_STEPS)
            args.warmup = min(args.warmup, 1)
            print(
                f"warning: --size base on CPU is slow (tens of seconds per step on 2 cores); "
                f"timing {args.steps} step(s) after {args.warmup} warm-up",
                file=sys.stderr,
            )
        for arch in archs:
            cfg = model_config(size, arch)
            torch.manual_seed(0)
            teacher = build_model(cfg).to(device).eval().requires_grad_(False)
            teacher_fn = _maybe_compile(teacher, args.compile)
            for batch_s in args.batch_seconds:
                stages = ["stage1", "stage2"] + (["plain"] if plain else [])
                for stage in stages:
                    case = Case(size, arch, stage, batch_s, args.utterance_seconds)
                    label = f"{size}/{arch}/{stage}/{batch_s:g}s"
                    print(f"... {label}", file=sys.stderr, flush=True)
                    try:
                        result = run_case(
                            case, teacher, None if stage == "plain" else teacher_fn, args, device, peak
                        )
                    except torch.cuda.OutOfMemoryError as exc:
                        result = {
                            **case.__dict__,
                            "batch": case.batch,
                            "error": f"out of memory: {exc}"[:300],
                        }
                    except Exception as exc:  # a failed case is recorded; the others still run
                        if os.environ.get("BENCH_RAISE"):
                            raise
                        result = {
                            **case.__dict__,
                            "batch": case.batch,
                            "error": f"{type(exc).__name__}: {exc}"[:300],
                        }
                    cases.append(result)
                    _cleanup(device)
                    build_report(cases, complete=False)
                    done = result.get("error") or (
                        f"{1000 * result['step_time_s']:.1f} ms/step, {result['audio_s_per_s']:.1f} audio s/s"
                    )
                    print(f"    {done}", file=sys.stderr, flush=True)
            del teacher, teacher_fn
            _cleanup(device)
    args.steps, args.warmup = requested_steps, requested_warmup
    report = build_report(cases, complete=True)
    print(format_table(report))
    if args.json is not None:
        print(f"wrote {args.json}")
    return report


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    main()

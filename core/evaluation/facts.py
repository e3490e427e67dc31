"""Model facts that do not need labels: size, compute per second of audio, speed, similarity to the teacher.

Compression is a trade: the probes say what a student lost, these say what it bought. MACs are counted by
watching the aten operators a real forward pass dispatches (a TorchDispatchMode), not by module hooks or a
formula from the config: that way matrix products inside attention, `F.linear` calls outside `nn.Linear`,
grouped convolutions and fused scaled-dot-product attention are all seen, whatever the implementation.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.calibrate.cka import linear_cka
from core.evaluation.features import FeatureSet, RepresentationModel

SAMPLE_RATE = 16000


def sample_rate_of(model: RepresentationModel) -> int:
    """The model's input rate: `config.sample_rate` (project models, Fbank), else 16 kHz (the family's
    rate)."""
    config = getattr(model, "config", None)
    rate = config.get("sample_rate") if isinstance(config, dict) else getattr(config, "sample_rate", None)
    return int(rate) if rate else SAMPLE_RATE


def count_parameters(model: RepresentationModel | torch.nn.Module) -> int:
    """The model's own count if it has one (a pruned model knows what it keeps), else every parameter."""
    own = getattr(model, "num_params", None)
    if callable(own):
        return int(own())
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    raise TypeError(
        f"cannot count the parameters of {type(model).__name__}: no num_params() and not a Module"
    )


# ------------------------------------------------------------------------------------------------------------
# MACs


def _product(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def _mm_macs(args: Sequence[Any], out: Any) -> int:
    """mm(a (n, k), b (k, m)), addmm(bias, a, b), bmm(a (B, n, k), b (B, k, m)), baddbmm(bias, a, b)."""
    a = args[-2] if len(args) >= 3 else args[0]
    return _product(out.shape) * int(a.shape[-1])


def _conv_macs(args: Sequence[Any], out: Any) -> int:
    """convolution(input, weight (out, in/groups, *kernel), ...): each output element costs in/groups ·
    kernel."""
    weight = args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed:  # weight (in, out/groups, *kernel): each input element feeds out/groups · kernel outputs
        return _product(args[0].shape) * _product(weight.shape[1:])
    return _product(out.shape) * _product(weight.shape[1:])


def _sdpa_macs(args: Sequence[Any], out: Any) -> int:
    """Fused attention softmax(Q Kᵀ) V: (batch·heads·L_q·L_k) · (d_qk + d_v)."""
    query, key, value = args[0], args[1], args[2]
    batch_heads = _product(query.shape[:-2])
    return (
        batch_heads
        * int(query.shape[-2])
        * int(key.shape[-2])
        * (int(query.shape[-1]) + int(value.shape[-1]))
    )


def _op_table() -> dict[Any, tuple[str, Callable[[Sequence[Any], Any], int]]]:
    aten = torch.ops.aten
    table: dict[Any, tuple[str, Callable[[Sequence[Any], Any], int]]] = {
        aten.mm.default: ("matmul", _mm_macs),
        aten.addmm.default: ("matmul", _mm_macs),
        aten.bmm.default: ("matmul", _mm_macs),
        aten.baddbmm.default: ("matmul", _mm_macs),
        aten.convolution.default: ("conv", _conv_macs),
    }
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    ):
        packet = getattr(aten, name, None)
        if packet is not None:
            table[packet.default] = ("attention", _sdpa_macs)
    return table


class MacCounter(TorchDispatchMode):
    """Counts multiply-accumulates of matrix products, convolutions and fused attention while active.

    Element-wise work (norms, activations, softmax) is not counted, by the usual convention: it is small next
    to the products and its cost depends more on memory than on arithmetic.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table = _op_table()
        self.by_kind: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        entry = self.table.get(func)
        if entry is not None:
            kind, count = entry
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.by_kind[kind] += count(args, first)
        return out


@dataclass
class MacReport:
    macs_per_second: int
    by_kind: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _probe_waveform(seconds: float, sample_rate: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    samples = int(round(seconds * sample_rate))
    generator = torch.Generator().manual_seed(seed)
    waveforms = 0.1 * torch.randn(1, samples, generator=generator)  # (batch, time)
    return waveforms, torch.tensor([samples], dtype=torch.int64)


def count_macs(model: RepresentationModel, *, seconds: float = 1.0) -> MacReport:
    """MACs of one forward pass over `seconds` of audio (batch of one), scaled to one second.

    Attention grows with the square of the length, so the figure is for `seconds`-long input (1 s by
    default, the SUPERB convention); counted on whatever device the model is on.
    """
    rate = sample_rate_of(model)
    waveforms, lengths = _probe_waveform(seconds, rate)
    device = device_of(model)
    counter = MacCounter()
    with _eval_mode(model), torch.no_grad(), counter:
        model(waveforms.to(device), lengths.to(device))
    scale = 1.0 / seconds
    return MacReport(
        macs_per_second=int(round(counter.total * scale)),
        by_kind={k: int(round(v * scale)) for k, v in sorted(counter.by_kind.items())},
        seconds=seconds,
    )


# ------------------------------------------------------------------------------------------------------------
# Speed


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    if not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def device_of(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


@dataclass
class SpeedReport:
    """Real-time factor = processing time / audio duration (below 1 is faster than real time)."""

    device: str
    rtf: float
    seconds_of_audio: float
    runs: int
    times_s: list[float]
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def real_time_factor(
    model: RepresentationModel,
    *,
    device: str | torch.device = "cpu",
    seconds: float = 10.0,
    runs: int = 5,
    warmup: int = 1,
) -> SpeedReport:
    """Median over `runs` timed forward passes of one `seconds`-long utterance, after `warmup` untimed ones.

    Uses the torch thread count as currently set (reported with the result), so numbers are comparable only
    between runs with the same setting. The model is moved to `device` for the measurement and moved back.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, found {runs}")
    device = torch.device(device)
    rate = sample_rate_of(model)
    waveforms, lengths = _probe_waveform(seconds, rate)
    waveforms, lengths = waveforms.to(device), lengths.to(device)
    home = device_of(model)
    module = model if isinstance(model, torch.nn.Module) else None
    if module is not None:
        module.to(device)
    times: list[float] = []
    try:
        with _eval_mode(model), torch.no_grad():
            for run in range(warmup + runs):
                _synchronise(device)
                start = time.perf_counter()
                model(waveforms, lengths)
                _synchronise(device)
                if run >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        if module is not None:
            module.to(home)
    return SpeedReport(
        device=str(device),
        rtf=statistics.median(times) / seconds,
        seconds_of_audio=seconds,
        runs=runs,
        times_s=times,
        threads=torch.get_num_threads(),
    )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------------
# Similarity to the teacher


def cluster_cka(
    teacher: FeatureSet,
    student: FeatureSet,
    clusters: Sequence[Sequence[int]],
    ids: Sequence[str],
    *,
    max_frames: int | None = 100_000,
) -> list[float]:
    """Linear CKA between the teacher's and the student's cluster-mean representation, per cluster.

    These are the quantities the student was distilled to match (algorithm.md §3: the target of cluster C is
    the mean of the teacher's layers in C, the student's side the mean of its own), so a low value pins
    down which target the student failed to learn. Frames are pooled over `ids`; if the two models disagree
    on an utterance's frame count the longer is trimmed. `max_frames` caps memory by keeping an evenly spaced
    subset of frames (deterministic).
    """
    missing = [i for i in ids if i not in teacher.reps or i not in student.reps]
    if missing:
        raise ValueError(f"{len(missing)} utterances lack features, e.g. {missing[:3]}")
    values = []
    for cluster in clusters:
        t_parts, s_parts = [], []
        index_t, index_s = torch.tensor(list(cluster)), torch.tensor(list(cluster))
        for utterance_id in ids:
            t_stack, s_stack = teacher[utterance_id], student[utterance_id]
            if max(cluster) >= t_stack.shape[0] or max(cluster) >= s_stack.shape[0] or min(cluster) < 0:
                raise ValueError(
                    f"cluster {list(cluster)} indexes representations the models lack "
                    f"(teacher has {t_stack.shape[0]}, student {s_stack.shape[0]})"
                )
            frames = min(t_stack.shape[1], s_stack.shape[1])
            t_parts.append(t_stack[index_t, :frames].float().mean(dim=0))  # (frame, feature)
            s_parts.append(s_stack[index_s, :frames].float().mean(dim=0))  # (frame, feature)
        t_frames, s_frames = torch.cat(t_parts), torch.cat(s_parts)  # (frame, feature) each
        if max_frames is not None and t_frames.shape[0] > max_frames:
            keep = torch.linspace(0, t_frames.shape[0] - 1, max_frames).round().long()
            t_frames, s_frames = t_frames[keep], s_frames[keep]
        values.append(float(linear_cka(t_frames.double().numpy(), s_frames.double().numpy())))
    return values


__all__ = [
    "MacCounter",
    "MacReport",
    "device_of",
    "SpeedReport",
    "cluster_cka",
    "count_macs",
    "count_parameters",
    "real_time_factor",
    "sample_rate_of",
]

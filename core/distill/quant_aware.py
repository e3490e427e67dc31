"""int8-aware final distillation: stage 2 trains the fixed student through its int8 export's rounding.

The int8 export that pays on a CPU (`core.export.onnx.quantize_int8`, mode `static_conv`) quantises the input
and output of every conv but the first (on the raw waveform) and of every MatMul/Gemm to uint8, one scale per
tensor, calibrated on the job's audio. The conv front end's activations are heavy-tailed after GELU (median 0,
max ~25 on hubert-mini), so one scale per tensor leaves most of their values one or two steps wide and the
features drift below the int8 gate (bench/results/onnx_int8.md). Here the same rounding is simulated in
stage 2 ("fake quantisation", straight-through gradients): every such tensor is quantised and dequantised as
onnxruntime would (asymmetric uint8, the range including 0, scale (max - min) / 255, zero point rounded), its
range an exponential moving average of each batch's min / max, and the student learns features that survive
it. Weights are left alone: int8 per output channel changes a conv's output by nothing measurable.

Nothing persists: `int8_aware(student)` installs forward hooks for the stage and removes them after; the
student's parameters and state dict are those of a plain student.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

QMIN, QMAX = 0, 255  # uint8: the activation type of the static_conv export
MOMENTUM = 0.01  # weight of each batch's min / max in the running range
# In training each tensor is rounded with this probability per forward pass, else left in fp32
# ("quant noise", Fan et al. 2020): the student learns features that hold with and without the rounding,
# since the int8 gate compares the int8 file with the fp32 student. Rounding every tensor every step (rate 1)
# trained the int8 path alone and moved the fp32 one away from it (hubert-mini, 4x latency student: linear
# CKA int8 vs fp32 0.867, against 0.899 without int8-aware training). Measured on that student (static_conv,
# mean ranges; bench/results/int8_aware.md): rate 0 (plain) 0.920, 0.15 0.958, 0.25 0.965, 0.35 0.960, 0.5
# 0.959.
RATE_ENV = "SKILLKD_INT8_AWARE_RATE"
RATE = 0.25
# The consistency term (`CompressionSpec.int8_aware_consistency`, default 0.2): each step also runs the
# student with every tensor rounded and pulls its representations to the same student's fp32 ones (L1 -
# cosine, the fp32 side detached), what the int8 gate compares. Quant noise alone reached 0.964-0.966, just
# below the gate; with the term 0.976-0.979 (hubert-mini, 4x latency, bench/results/int8_aware.md).


def scale_zero_point(lo: Tensor | float, hi: Tensor | float) -> tuple[Tensor, Tensor]:
    """onnxruntime's asymmetric uint8 parameters for the range [lo, hi]: the range is widened to hold 0,
    scale = (hi - lo) / 255 (1 for an all-zero range), zero point = round(-lo / scale) in [0, 255]. As 0-d
    tensors on the range's device (a training step reads no value back to the host), computed in float64 as
    onnxruntime computes them (a zero point at a rounding tie, -lo / scale = 127.5, must round alike)."""
    device = lo.device if isinstance(lo, Tensor) else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    lo = torch.clamp(torch.as_tensor(lo, device=device).to(dtype), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, device=device).to(dtype), min=0.0)
    scale = (hi - lo) / (QMAX - QMIN)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale.float(), torch.clamp(torch.round(QMIN - lo / scale), QMIN, QMAX).float()


def fake_quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int) -> Tensor:
    """Quantise to uint8 and back (onnxruntime's QuantizeLinear then DequantizeLinear: round half to even,
    saturate); the gradient passes where x lies inside the representable range and is 0 where it saturates."""
    q = torch.clamp(torch.round(x / scale) + zero_point, QMIN, QMAX)
    y = (q - zero_point) * scale
    inside = (x >= (QMIN - zero_point) * scale) & (x <= (QMAX - zero_point) * scale)
    return y.detach() + (x - x.detach()) * inside


class RunningRange:
    """One tensor's calibration range: the first batch's min / max, then a moving average of them."""

    def __init__(self, momentum: float = MOMENTUM, rate: float = 1.0, seed: int = 0) -> None:
        self.momentum = momentum
        self.rate = rate
        self.draws = random.Random(seed)  # its own stream: torch's (dropout, masks) stays as without it
        self.lo: Tensor | None = None  # 0-d, on the tensor's device
        self.hi: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)

    def __call__(self, x: Tensor, training: bool, forced: bool | None = None) -> Tensor:
        """`forced`: None rounds with the rate (in training; always in eval), True always, False never (and
        then the range is left as it is)."""
        if forced is False:
            return x
        if (training and forced is None) or self.lo is None:
            self.observe(x)
        assert self.lo is not None and self.hi is not None
        if forced is None and training and self.rate < 1.0 and self.draws.random() >= self.rate:
            return x
        return fake_quantize(x, *scale_zero_point(self.lo, self.hi))


class Int8Aware(dict[str, Any]):
    """What `int8_aware` yields: its summary (a dict, for the stage's result) and `rounding(on)`, a block in
    which every hooked tensor is rounded (True) or none is (False), whatever the rate."""

    forced: bool | None = None
    consistency: float = 0.0

    @contextmanager
    def rounding(self, on: bool) -> Iterator[None]:
        before, self.forced = self.forced, on
        try:
            yield
        finally:
            self.forced = before


def quantised_modules(student: nn.Module) -> list[nn.Module]:
    """The modules whose input and output the static_conv export quantises: every Conv1d but the first (the
    waveform conv) and every Linear of the encoder."""
    convs: list[nn.Module] = [m for m in student.modules() if isinstance(m, nn.Conv1d)]
    return convs[1:] + [m for m in student.modules() if isinstance(m, nn.Linear)]


@contextmanager
def int8_aware(student: nn.Module, consistency: float = 0.0) -> Iterator[Int8Aware]:
    """Within the block, `student`'s quantised modules see their input and output fake-quantised to uint8.
    Yields its summary (how many tensors; `Int8Aware`) for the stage's result, `consistency` the weight of the
    stage's consistency term (0: none); the hooks are gone after the block."""
    handles = []
    modules = quantised_modules(student)
    rate = float(os.environ.get(RATE_ENV) or RATE)
    state = Int8Aware(
        fake_quantised_tensors=2 * len(modules),
        rate=rate,
        convs=sum(isinstance(m, nn.Conv1d) for m in modules),
        linears=sum(isinstance(m, nn.Linear) for m in modules),
    )
    state.consistency = consistency
    if state.consistency:
        state["consistency"] = state.consistency
    for i, module in enumerate(modules):
        before, after = RunningRange(rate=rate, seed=2 * i), RunningRange(rate=rate, seed=2 * i + 1)

        def pre(mod: nn.Module, args: tuple[Any, ...], _r: RunningRange = before) -> tuple[Any, ...]:
            return (_r(args[0], mod.training, state.forced), *args[1:])

        def post(mod: nn.Module, _args: tuple[Any, ...], out: Tensor, _r: RunningRange = after) -> Tensor:
            return _r(out, mod.training, state.forced)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["Int8Aware", "fake_quantize", "int8_aware", "quantised_modules", "scale_zero_point"]

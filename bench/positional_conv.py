"""The positional conv, a fixed cost no pruning removes (issue 25's profile: 23% of a fast hubert-mini
student's PyTorch time, 17% in onnxruntime fp32, bench/results/inference_profile.md): how much faster can the
same grouped conv (kernel 128, 16 groups, padding 64, the last frame dropped) be computed, exactly?

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python -m bench.positional_conv \\
        --json bench/results/positional_conv.json --markdown bench/results/positional_conv.md

Variants, each on one (1, channels, frames) input, one thread:
- `conv`: the grouped Conv1d as the models run it (PyTorch; onnxruntime: the exported Conv node);
- `fft-ols`: overlap-save with torch.fft as PyTorch inference runs it (`core.models.components.overlap_save`:
  blocks of n = 2 x kernel samples, kernel - 1 overlap), the kernel's spectrum computed once, per frequency a
  (out x in) complex matmul per group (PyTorch only: the TorchScript ONNX exporter has no rfft);
- `dft-ols`: the same overlap-save with the DFTs as real matmuls by fixed cos/sin matrices (exportable:
  PyTorch and onnxruntime).

Widths: hubert-mini's 256 channels and the Base models' 768; 250 / 500 / 1500 frames (5, 10, 30 s). Every
variant's max |difference| from `conv` is printed with its time (median of `--rounds` interleaved passes).

With `--teacher DIR --student-report REPORT.json` it also times whole models as the engine and the `hf`
export run them (skillkd adopts `fft-ols` for inference in PyTorch: `core.models.components.overlap_save`):
the teacher and that student shape (`bench.inference_profile.shaped_student`), each with the positional conv
by overlap-save and by the plain conv, the four interleaved on one `--seconds` utterance.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.output import write_outputs
from core.calibrate.latency import cpu_model
from core.models.components import overlap_save, spectral_kernel

KERNEL, GROUPS = 128, 16


def _blocks(x: Tensor, n: int, kernel: int) -> tuple[Tensor, int]:
    """x (B, C, T) -> overlapping blocks (B, C, nb, n), step n - kernel + 1, padded as the conv pads."""
    b, c, t = x.shape
    step = n - kernel + 1
    nb = (t + step - 1) // step
    xp = F.pad(x, (kernel // 2, nb * step + step - t - kernel // 2))
    head = xp[..., : nb * step].reshape(b, c, nb, step)
    tail = xp[..., step : step + nb * step].reshape(b, c, nb, step)[..., : kernel - 1]
    return torch.cat([head, tail], -1), nb


class FftOls(nn.Module):
    """The overlap-save PyTorch inference runs (`core.models.components.overlap_save`), on a bare conv."""

    def __init__(self, conv: nn.Conv1d, n: int) -> None:
        super().__init__()
        self.conv, self.n = conv, n
        self.register_buffer("w", spectral_kernel(conv, n))

    def forward(self, x: Tensor) -> Tensor:
        return overlap_save(x, self.conv, self.w, self.n)


class DftOls(nn.Module):
    def __init__(self, conv: nn.Conv1d, n: int) -> None:
        super().__init__()
        self.conv, self.n = conv, n
        c, g, k = conv.out_channels, conv.groups, conv.kernel_size[0]
        cg, f = conv.in_channels // g, n // 2 + 1
        w = (
            torch.fft.rfft(conv.weight.detach().double().flip(-1), n=n)
            .view(g, c // g, cg, f)
            .permute(0, 3, 1, 2)
        )
        block = torch.cat([torch.cat([w.real, -w.imag], -1), torch.cat([w.imag, w.real], -1)], -2)
        self.register_buffer("w", block.float().contiguous())  # g f 2o 2c: [yr; yi] = [[wr, -wi], [wi, wr]]
        t, freq = torch.arange(n, dtype=torch.float64), torch.arange(f, dtype=torch.float64)
        angle = 2 * math.pi * t[:, None] * freq[None, :] / n
        self.register_buffer("fwd", torch.cat([torch.cos(angle), -torch.sin(angle)], 1).float())
        kept = torch.arange(k - 1, n, dtype=torch.float64)  # overlap-save keeps the last n - k + 1 samples
        angle = 2 * math.pi * freq[:, None] * kept[None, :] / n
        scale = torch.full((f,), 2.0, dtype=torch.float64)
        scale[0] = scale[-1] = 1.0
        inv = torch.cat([scale[:, None] * torch.cos(angle), -scale[:, None] * torch.sin(angle)], 0) / n
        self.register_buffer("inv", inv.float())

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        g, k, n = self.conv.groups, self.conv.kernel_size[0], self.n
        f = n // 2 + 1
        blocks, nb = _blocks(x, n, k)
        xf = (
            (blocks @ self.fwd)
            .view(b, g, c // g, nb, 2, f)
            .permute(1, 5, 4, 2, 0, 3)
            .reshape(g, f, -1, b * nb)
        )
        y = torch.matmul(self.w, xf).view(g, f, 2, c // g, b, nb).permute(4, 0, 3, 5, 2, 1)
        return (y.reshape(b, c, nb, 2 * f) @ self.inv).reshape(b, c, -1)[..., :t] + self.conv.bias[:, None]


class Conv(nn.Module):
    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y[..., :-1] if self.conv.kernel_size[0] % 2 == 0 else y


def _onnx(module: nn.Module, x: Tensor, path: Path, threads: int) -> Any:
    from core.export.onnx import onnx_session

    torch.onnx.export(
        module,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {2: "frames"}, "y": {2: "frames"}},
        opset_version=17,
        dynamo=False,
    )
    return onnx_session(path, threads)


def _run_onnx(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"x": x})[0]


def bench_width(channels: int, frames: Sequence[int], rounds: int, threads: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    conv = (
        nn.Conv1d(channels, channels, KERNEL, padding=KERNEL // 2, groups=GROUPS).eval().requires_grad_(False)
    )
    n = 1 << (2 * KERNEL - 1).bit_length()
    torch_variants: dict[str, nn.Module] = {
        "conv": Conv(conv),
        "fft-ols": FftOls(conv, n),
        "dft-ols": DftOls(conv, n),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = torch.randn(1, channels, frames[0])
        sessions = {
            name: _onnx(torch_variants[name], probe, Path(tmp) / f"{name}.onnx", threads)
            for name in ("conv", "dft-ols")
        }
        for t in frames:
            x = torch.randn(1, channels, t)
            xn = x.numpy()
            calls: dict[str, Callable[[], Any]] = {}
            for k, m in torch_variants.items():
                calls[f"torch {k}"] = partial(m, x)
            for k, session in sessions.items():
                calls[f"onnxruntime {k}"] = partial(_run_onnx, session, xn)
            with torch.inference_mode():
                reference = torch_variants["conv"](x).numpy()
                diffs = {k: float(np.abs(np.asarray(f()) - reference).max()) for k, f in calls.items()}
                times: dict[str, list[float]] = {k: [] for k in calls}
                for r in range(rounds):
                    order = list(calls) if r % 2 == 0 else list(calls)[::-1]
                    for k in order:
                        start = time.perf_counter()
                        calls[k]()
                        times[k].append(time.perf_counter() - start)
            medians = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {
                    "channels": channels,
                    "frames": t,
                    "ms": {k: 1000 * v for k, v in medians.items()},
                    "speedup_vs_conv": {k: medians[f"{k.split()[0]} conv"] / v for k, v in medians.items()},
                    "max_abs_diff": diffs,
                }
            )
    return rows


def bench_models(teacher_dir: Path, student_report: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Teacher and student, positional conv by overlap-save ("fft") and plain ("conv"), interleaved."""
    import json

    import core.models.components as components
    from bench.inference_profile import shaped_student
    from core.models import load_model

    teacher = load_model(teacher_dir).eval()
    student = shaped_student(teacher, json.loads(student_report.read_text())["student"])
    x = torch.randn(1, int(seconds * teacher.config.sample_rate), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([x.shape[1]])
    real = components.spectral_ok

    def plain(*args: Any) -> bool:
        return False

    runs = {
        f"{name} {way}": (model, real if way == "fft" else plain)
        for name, model in (("teacher", teacher), ("student", student))
        for way in ("fft", "conv")
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    try:
        with torch.inference_mode():
            for r in range(rounds + 1):
                for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                    model, gate = runs[k]
                    components.spectral_ok = gate
                    start = time.perf_counter()
                    model(x, lengths)
                    if r:  # the first round is a warm-up
                        times[k].append(time.perf_counter() - start)
    finally:
        components.spectral_ok = real
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {
        "seconds": seconds,
        "ms": ms,
        "speedup_fft_vs_conv": {n: ms[f"{n} conv"] / ms[f"{n} fft"] for n in ("teacher", "student")},
        "student_speedup_over_teacher": {w: ms[f"teacher {w}"] / ms[f"student {w}"] for w in ("fft", "conv")},
    }


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The positional conv: the grouped conv vs overlap-save FFT / DFT-by-matmul",
        "",
        f"`{report['command']}`",
        "",
        f"Kernel {KERNEL}, {GROUPS} groups, batch 1, {report['threads']} thread(s), median of "
        f"{report['rounds']} interleaved passes; CPU {report['cpu']}, torch {report['torch']}; "
        "load average (1 min) before/after: "
        f"{report['load'][0]:.2f} / {report['load'][1]:.2f}.",
        "",
    ]
    names = list(report["rows"][0]["ms"])
    lines.append("| channels | frames | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for row in report["rows"]:
        cells = [
            f"{row['ms'][k]:.2f} ms ({row['speedup_vs_conv'][k]:.2f}x, diff {row['max_abs_diff'][k]:.0e})"
            for k in names
        ]
        lines.append(f"| {row['channels']} | {row['frames']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: median time (speed-up over the same runtime's conv, max |difference| from conv).",
    ]
    models = report.get("models")
    if models:
        ms = models["ms"]
        lines += [
            "",
            f"## Whole models, PyTorch fp32, one {models['seconds']:g} s utterance: {report['student']}",
            "",
            "| model | positional conv by overlap-save | plain conv | speed-up |",
            "|---|---|---|---|",
        ]
        for n in ("teacher", "student"):
            lines.append(
                f"| {n} | {ms[f'{n} fft']:.1f} ms | {ms[f'{n} conv']:.1f} ms | "
                f"{models['speedup_fft_vs_conv'][n]:.2f}x |"
            )
        over = models["student_speedup_over_teacher"]
        lines += [
            "",
            f"Student over teacher: {over['fft']:.2f}x with overlap-save, {over['conv']:.2f}x plain.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs="+", default=[256, 768])
    p.add_argument("--frames", type=int, nargs="+", default=[250, 500, 1500])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher", type=Path, help="also time whole models: this teacher ...")
    p.add_argument("--student-report", type=Path, help="... and the student shape in this report.json")
    p.add_argument("--seconds", type=float, default=10.0, help="the whole models' utterance")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    rows = [r for c in args.channels for r in bench_width(c, args.frames, args.rounds, args.threads)]
    report = {
        "benchmark": "positional_conv",
        "command": "python -m bench.positional_conv " + " ".join(sys.argv[1:] if argv is None else argv),
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "load": [before, os.getloadavg()[0]],
        "rows": rows,
    }
    if args.teacher is not None and args.student_report is not None:
        report["student"] = f"the shape of {args.student_report}"
        report["models"] = bench_models(args.teacher, args.student_report, args.seconds, args.rounds)
        report["load"][1] = os.getloadavg()[0]
    write_outputs(report, format_markdown(report), args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()

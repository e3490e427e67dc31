"""Which of a student's int8-rounded tensors move its features (issue 25): the static_conv export's rounding
simulated in PyTorch (`core.distill.quant_aware.fake_quantize`: onnxruntime's asymmetric uint8, one scale per
tensor) on chosen groups of tensors at a time, each group's agreement with the fp32 student on held-out audio
(the export's check: per hidden state, linear CKA and cosine over valid frames).

    OMP_NUM_THREADS=1 python -m bench.int8_sensitivity STUDENT AUDIO [--clip-pre-gelu 3] --out DIR

Ranges are calibrated as the export calibrates (`static_conv`: on the job's calibration utterances, each
tensor's range the mean of each utterance's min and max). Groups: every tensor the export quantises; the
conv front end's inputs and outputs together, its inputs (after the previous layer's GELU) alone, its outputs
(before the GELU) alone; the transformer's Linear inputs and outputs; then per conv its input, its output, and
everything but it. `--clip-pre-gelu C` narrows each conv output's range to [max(min, -C), max]: below -C the
GELU that follows is within GELU(-C) of 0 (-0.004 at C = 3), so the rounding step shrinks at almost no cost
in the values that reach the next conv.

It reads no ONNX file: a quick look at where the loss sits before training or exporting anything. Not
simulated: the positional conv (PyTorch runs it by FFT in inference, the ONNX file as a Conv that static_conv
quantises; leaving it in fp32 in the ONNX file moved min CKA by at most 0.003 on the students measured with
`bench.onnx_int8 --ablate-convs`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.data import scan_audio
from core.distill.quant_aware import fake_quantize, quantised_modules, scale_zero_point
from core.export.for_users import held_out_audio
from core.export.onnx import TorchHiddenStates, check_batches, compare_outputs, model_inputs
from core.models import load_model

Key = tuple[int, str]  # (index among the quantised modules, "in" | "out")


def calibrate(
    graph: nn.Module, modules: list[nn.Module], inputs: list[dict[str, np.ndarray]]
) -> dict[Key, Any]:
    """Each hooked tensor's range over the calibration inputs: the mean of each input's min and max (the
    export's moving-average MinMax), as onnxruntime's uint8 (scale, zero point)."""
    seen: dict[Key, list[tuple[float, float]]] = {}

    def note(key: Key, x: Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        seen.setdefault(key, []).append((float(lo), float(hi)))

    handles = []
    for i, module in enumerate(modules):
        handles.append(module.register_forward_pre_hook(lambda _m, a, _i=i: note((_i, "in"), a[0])))
        handles.append(module.register_forward_hook(lambda _m, _a, o, _i=i: note((_i, "out"), o)))
    try:
        with torch.no_grad():
            for inp in inputs:
                graph(*(torch.from_numpy(v) for v in inp.values()))
    finally:
        for handle in handles:
            handle.remove()
    return {
        k: (float(np.mean([r[0] for r in v])), float(np.mean([r[1] for r in v]))) for k, v in seen.items()
    }


@contextmanager
def rounded(
    modules: list[nn.Module], ranges: dict[Key, tuple[float, float]], keys: set[Key]
) -> Iterator[None]:
    """Within the block, the tensors named by `keys` are rounded to uint8 in the forward pass."""
    params = {k: scale_zero_point(*ranges[k]) for k in keys}
    handles = []
    for i, module in enumerate(modules):
        if (i, "in") in keys:
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, a, _k=(i, "in"): (fake_quantize(a[0], *params[_k]), *a[1:])
                )
            )
        if (i, "out") in keys:
            handles.append(
                module.register_forward_hook(lambda _m, _a, o, _k=(i, "out"): fake_quantize(o, *params[_k]))
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", type=Path, help="a student (or teacher) directory")
    parser.add_argument("audio", type=Path, help="the audio of the checks and the calibration (a job's)")
    parser.add_argument(
        "--clip-pre-gelu", type=float, default=0.0, help="narrow conv outputs to >= -C (0: off)"
    )
    parser.add_argument("--check-utterances", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="write sensitivity.json and sensitivity.md here"
    )
    args = parser.parse_args(argv)

    student = load_model(args.student).eval()
    held, calib = held_out_audio(
        scan_audio(args.audio), student.config.sample_rate, seed=args.seed, max_items=args.check_utterances
    )
    batches = check_batches(student, held)
    graph = TorchHiddenStates(student).module.eval()
    modules = quantised_modules(graph)
    ranges = calibrate(graph, modules, [model_inputs(student, [w]) for w in (calib or held)])
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv1d)]
    if args.clip_pre_gelu:
        for i in convs:
            if (i, "out") in ranges:
                lo, hi = ranges[(i, "out")]
                ranges[(i, "out")] = (max(lo, -args.clip_pre_gelu), hi)
    names = {m: n for n, m in graph.named_modules()}
    with torch.no_grad():
        reference = [graph(*(torch.from_numpy(v) for v in b.values()))[0].numpy() for b in batches]

    def agreement(keys: set[Key]) -> dict[str, float]:
        with torch.no_grad(), rounded(modules, ranges, keys):
            got = [graph(*(torch.from_numpy(v) for v in b.values()))[0].numpy() for b in batches]
        layers = compare_outputs(student, batches, reference, got)
        return {
            "min_cka": round(min(x["cka"] for x in layers), 4),
            "min_cosine": round(min(x["cosine"] for x in layers), 4),
            "cka_last": round(layers[-1]["cka"], 4),
        }

    used = set(ranges)  # a module that never ran (pruned away) has no range
    conv_keys = {k for k in used if k[0] in convs}
    groups: dict[str, set[Key]] = {
        "every quantised tensor": used,
        "conv inputs and outputs": conv_keys,
        "conv inputs": {k for k in conv_keys if k[1] == "in"},
        "conv outputs (before GELU)": {k for k in conv_keys if k[1] == "out"},
        "Linear inputs and outputs": used - conv_keys,
    }
    rows = [{"group": name, "tensors": len(keys), **agreement(keys)} for name, keys in groups.items()]
    per_conv = []
    for i in convs:
        if (i, "in") not in used:
            continue
        name = names[modules[i]]
        per_conv.append(
            {
                "conv": name,
                "input range": [round(v, 3) for v in ranges[(i, "in")]],
                "output range": [round(v, 3) for v in ranges[(i, "out")]],
                "input alone": agreement({(i, "in")})["min_cka"],
                "output alone": agreement({(i, "out")})["min_cka"],
                "all but it": agreement(used - {(i, "in"), (i, "out")})["min_cka"],
            }
        )
    result = {
        "student": str(args.student),
        "clip_pre_gelu": args.clip_pre_gelu,
        "check_utterances": len(held),
        "calibration_utterances": len(calib or held),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "groups": rows,
        "per_conv": per_conv,
    }
    text = render(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sensitivity.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "sensitivity.md").write_text(text)
    return result


def render(result: dict[str, Any]) -> str:
    clip = result["clip_pre_gelu"]
    lines = [
        f"int8 rounding simulated in PyTorch on {result['student']}"
        + (f", conv outputs' ranges clipped at -{clip:g}" if clip else ""),
        f"({result['check_utterances']} held-out check utterances, "
        f"{result['calibration_utterances']} calibration)",
        "",
        "| tensors rounded | count | min CKA | min cosine | CKA last |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['group']} | {r['tensors']} | {r['min_cka']:.4f} | {r['min_cosine']:.4f} "
        f"| {r['cka_last']:.4f} |"
        for r in result["groups"]
    ]
    lines += [
        "",
        "| conv | input range | output range | min CKA: input alone | output alone | all but it |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['conv']} | {r['input range']} | {r['output range']} | {r['input alone']:.4f} "
        f"| {r['output alone']:.4f} | {r['all but it']:.4f} |"
        for r in result["per_conv"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

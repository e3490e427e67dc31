"""int8 recipes for a student's ONNX file on this CPU (issue 25, "int8 that pays"): each recipe's speed-up
over the fp32 ONNX file of the same student on one thread, measured side by side (the files run in turn, round
after round, on one 10 s utterance), its agreement with PyTorch fp32 on held-out audio (the export's check:
per-layer linear CKA and cosine) and, with `--profile`, where onnxruntime spends the time of fp32 and of the
`static_conv` (its per-node profiler, summed by operator).

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python -m bench.onnx_int8 STUDENT AUDIO --rounds 9 \\
        --profile --out bench/results/onnx_int8

STUDENT is a student (or teacher) directory, or a job's report.json with `--teacher`: the teacher pruned to
that student's architecture by its masks, untrained after the cut (a real student's shape, hence its speed;
not its agreement figures).

Recipes (onnxruntime.quantization; calibration on the job's audio as the export draws it):
- dynamic, static, static_conv: the export's modes (`core.export.onnx.quantize_int8`): MatMul/Gemm weights
  int8 with activations quantised per call; QDQ over MatMul/Gemm (int8 activations, calibrated); QDQ with
  uint8 activations and per-channel int8 weights over every Conv but the first (on the raw waveform) and every
  MatMul/Gemm
- static_conv_first_too: static_conv with the first conv quantised as well
- static_conv_s8s8: static_conv with int8 activations
- static_conv_qoperator: static_conv in the QOperator format (QLinearConv / QLinearMatMul nodes)
- static_conv_global_range: static_conv with each activation's range the global min / max over the calibration
  utterances (onnxruntime's plain MinMax) instead of the mean of each utterance's
- static_conv_untuned: static_conv as it was before 2026-12-06, without `core.export.onnx.tune_static_conv`
  (its GELUs left as the quantiser writes them, unfused by onnxruntime after a DequantizeLinear; its inferred
  shapes kept, with which onnxruntime fuses SkipLayerNormalization, slow on one thread)
- static_conv_keep_shapes: static_conv with its GELUs fused but its inferred shapes kept
- static_conv_convs_only: static_conv without the MatMul/Gemm (the transformer stays fp32)
- static_conv_attention_fp32: static_conv with attention's products of two activations (queries x keys,
  probabilities x values: int8-aware training does not round them) left in fp32
The other variants of static_conv are tuned as it is.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import scan_audio
from core.export.for_users import held_out_audio
from core.export.onnx import (
    CalibrationReader,
    TorchHiddenStates,
    check_batches,
    compare_outputs,
    export_onnx,
    first_conv,
    model_inputs,
    onnx_session,
    onnx_speedups,
    quantize_int8,
    tune_static_conv,
)
from core.models import load_model

RECIPES = (
    "dynamic",
    "static",
    "static_conv",
    "static_conv_first_too",
    "static_conv_s8s8",
    "static_conv_qoperator",
    "static_conv_global_range",
    "static_conv_untuned",
    "static_conv_keep_shapes",
    "static_conv_convs_only",
    "static_conv_attention_fp32",
)


def quantize(
    recipe: str, fp32: Path, dst: Path, calib: list[dict[str, np.ndarray]], keep_fp32: str | None = None
) -> None:
    """`recipe`'s int8 file of `fp32`; `keep_fp32` (a static_conv variant): one more Conv left unquantised."""
    if keep_fp32 is not None:
        recipe = "static_conv_keep_fp32"
    if recipe in ("dynamic", "static", "static_conv"):
        quantize_int8(fp32, dst, recipe, calib)
        return
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        options: dict[str, Any] = {
            "quant_format": QuantFormat.QDQ,
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "per_channel": True,
            "op_types_to_quantize": ["Conv", "MatMul", "Gemm"],
            "nodes_to_exclude": first_conv(prepared),
        }
        if recipe == "static_conv_first_too":
            options["nodes_to_exclude"] = []
        elif recipe == "static_conv_s8s8":
            options["activation_type"] = QuantType.QInt8
        elif recipe == "static_conv_qoperator":
            options["quant_format"] = QuantFormat.QOperator
        elif recipe == "static_conv_global_range":
            pass  # the global min / max over the calibration utterances (static_conv before 2026-12-06)
        elif recipe == "static_conv_keep_fp32":
            options["nodes_to_exclude"] = [*first_conv(prepared), keep_fp32]
        elif recipe == "static_conv_attention_fp32":
            options["nodes_to_exclude"] = [*first_conv(prepared), *activation_matmuls(prepared)]
        elif recipe == "static_conv_convs_only":
            options["op_types_to_quantize"] = ["Conv"]
        elif recipe not in ("static_conv_untuned", "static_conv_keep_shapes"):
            raise ValueError(recipe)
        if recipe != "static_conv_global_range":
            options["extra_options"] = {"CalibMovingAverage": True}  # as static_conv calibrates
        quantize_static(str(prepared), str(dst), CalibrationReader(calib), **options)  # type: ignore[arg-type]
    if recipe != "static_conv_untuned":
        tune_static_conv(dst, drop_shapes=recipe != "static_conv_keep_shapes")


def activation_matmuls(path: Path) -> list[str]:
    """The graph's MatMul nodes with no weight among their inputs: attention's scores and context."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    weights |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    for node in graph.node:  # a weight reached through a Transpose (or a Cast) of one is a weight too
        if node.op_type in ("Transpose", "Cast", "Identity") and node.input and node.input[0] in weights:
            weights.update(node.output)
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


def student_of_shape(teacher: Path, report: Path) -> Any:
    """`teacher` cut to the architecture `report` (a job's report.json, or its "student" part) describes: the
    first units of each conv layer, attention layer and FFN kept, the rest pruned."""
    from core.models import make_student

    info = json.loads(report.read_text())
    info = info.get("student", info)
    student = make_student(load_model(teacher))

    def keep(hard_concrete: Any, n: int) -> None:
        scores = torch.full((hard_concrete.n,), -10.0)
        scores[:n] = 10.0
        hard_concrete.log_alpha.data.copy_(scores)

    for layer, channels in zip(student.feature_extractor.conv_layers, info["conv_channels"], strict=True):
        keep(layer.hard_concrete, channels)
    for layer, sizes in zip(student.encoder.layers, info["layers"], strict=True):
        keep(layer.attention.hard_concrete, sizes["heads"])
        keep(layer.feed_forward.hard_concrete, sizes["ffn"])
    student.eval()
    student.prune()
    return student


def profile(path: Path, sample_rate: int, runs: int = 3, top: int = 8) -> list[dict[str, Any]]:
    """onnxruntime's per-node profile of `runs` passes on one 10 s utterance, one thread: milliseconds per
    pass and share of the total, by operator type, the largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 10 * sample_rate)).astype(np.float32)
        feeds = {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)}
        session.run(None, feeds)
        session.end_profiling()  # the warm-up pass out of the figures
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return [
        {"op": op, "ms_per_pass": round(us / (runs + 1) / 1000, 2), "share": round(us / total, 3)}
        for op, us in by_op.most_common(top)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("student", type=Path, help="a student or teacher directory, or a report.json")
    parser.add_argument("--teacher", type=Path, help="with a report.json: the teacher to cut to its shape")
    parser.add_argument("audio", type=Path, help="the audio of the checks and the calibration (a job's)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--rounds", type=int, default=9, help="timed passes of each file, run in turn")
    parser.add_argument("--check-utterances", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--ablate-convs",
        action="store_true",
        help="static_conv with each conv in turn left in fp32: which one's rounding moves the features most",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.student.suffix == ".json":
        if args.teacher is None:
            parser.error("a report.json needs --teacher")
        model = student_of_shape(args.teacher, args.student)
    else:
        model = load_model(args.student).eval()
    sr = model.config.sample_rate
    held, calib_waves = held_out_audio(
        scan_audio(args.audio), sr, seed=args.seed, max_items=args.check_utterances
    )
    calib = [model_inputs(model, [w]) for w in (calib_waves or held)]
    batches = check_batches(model, held)
    graph = TorchHiddenStates(model).module
    with torch.no_grad():
        reference = [graph(*(torch.from_numpy(v) for v in b.values()))[0].numpy() for b in batches]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": Path(tmp) / "fp32.onnx"}
        export_onnx(model, files["fp32"])
        for recipe in recipes:
            files[recipe] = Path(tmp) / f"{recipe}.onnx"
            t0 = time.perf_counter()
            quantize(recipe, files["fp32"], files[recipe], calib)
            rows[recipe] = {"quantise_s": round(time.perf_counter() - t0, 1)}
        rows = {"fp32": {}, **rows}
        for name, path in files.items():
            session = onnx_session(path)
            layers = compare_outputs(model, batches, reference, [session.run(None, b)[0] for b in batches])
            rows[name].update(
                size_bytes=path.stat().st_size,
                min_cka=min(x["cka"] for x in layers),
                min_cosine=min(x["cosine"] for x in layers),
                cosine_last=layers[-1]["cosine"],
            )
        load_before = os.getloadavg()
        median = onnx_speedups(files, sr, threads=1, runs=args.rounds)
        load_after = os.getloadavg()
        for name in files:
            rows[name]["ms_per_10s_1_thread"] = round(1000 * median[name], 1)
            rows[name]["speedup_vs_fp32"] = round(median["fp32"] / median[name], 3)
        ablation = conv_ablation(model, files["fp32"], calib, batches, reference) if args.ablate_convs else []
        profiles = (
            {name: profile(files[name], sr) for name in ("fp32", "static_conv") if name in files}
            if args.profile
            else {}
        )
    result = {
        "student": str(args.student),
        "audio": str(args.audio),
        "check_utterances": len(held),
        "calibration_utterances": len(calib),
        "rounds": args.rounds,
        "loadavg_before_after": [round(x, 2) for x in (*load_before, *load_after)],
        "rows": rows,
        "profiles": profiles,
        "conv_ablation": ablation,
        "environment": {
            "onnxruntime": __import__("onnxruntime").__version__,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return result


def conv_ablation(
    model: Any,
    fp32: Path,
    calib: list[dict[str, np.ndarray]],
    batches: list[dict[str, np.ndarray]],
    reference: list[np.ndarray],
) -> list[dict[str, Any]]:
    """static_conv's min / last-layer CKA with fp32 PyTorch with each Conv but the first (already fp32) left
    unquantised in turn."""
    import onnx

    convs = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if n.op_type == "Conv"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in convs[1:]:
            dst = Path(tmp) / "kept.onnx"
            quantize("static_conv", fp32, dst, calib, keep_fp32=name)
            session = onnx_session(dst)
            layers = compare_outputs(model, batches, reference, [session.run(None, b)[0] for b in batches])
            rows.append(
                {"fp32_conv": name, "min_cka": min(x["cka"] for x in layers), "cka_last": layers[-1]["cka"]}
            )
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [
        f"student `{result['student']}`; {result['rounds']} rounds, one 10 s utterance, one thread; "
        f"load average (1, 5, 15 min) before {result['loadavg_before_after'][:3]}, "
        f"after {result['loadavg_before_after'][3:]}",
        "",
        "| recipe | size (MB) | ms per 10 s | speed-up vs fp32 ONNX | min CKA | min cosine | cosine last |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['size_bytes'] / 1e6:.2f} | {row['ms_per_10s_1_thread']} | "
            f"{row['speedup_vs_fp32']:.2f}x | {row['min_cka']:.5f} | {row['min_cosine']:.5f} | "
            f"{row['cosine_last']:.5f} |"
        )
    if result.get("conv_ablation"):
        lines += [
            "",
            "static_conv with one more conv left in fp32:",
            "",
            "| conv in fp32 | min CKA | CKA last |",
        ]
        lines += ["|---|---|---|"]
        lines += [
            f"| {r['fp32_conv']} | {r['min_cka']:.4f} | {r['cka_last']:.4f} |"
            for r in result["conv_ablation"]
        ]
    for name, ops in result["profiles"].items():
        lines += ["", f"profile of {name} (onnxruntime, one thread, by operator):", ""]
        lines += [f"- {o['op']}: {o['ms_per_pass']} ms ({100 * o['share']:.1f}%)" for o in ops]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

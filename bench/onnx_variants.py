"""PyTorch fp32 vs ONNX fp32 / fp16 / int8 (dynamic and static) of one student: file size, CPU real-time
factor, per-layer cosine / linear CKA against PyTorch fp32 on held-out audio, and the PER of a phone probe
trained on PyTorch fp32 features and scored on each variant's features.

    OMP_NUM_THREADS=1 python -m bench.onnx_variants /tmp/hm-student/student ../shared/data/tts-dev \\
        --out bench/results/onnx_variants

Uses the functions the export itself uses (core.export): the same graph, converters, comparisons and probe
(so the table measures what `skillkd export --onnx fp32,fp16,int8` offers). The held-out check audio is a
seeded subset of the test split (each utterance alone, plus one padded batch of the longest and the
shortest); static int8 is calibrated on train-split utterances. RTF: one 10 s utterance, median of --runs
after a warm-up, onnxruntime with 1 intra-op thread and with its default (all cores); PyTorch fp32 is the
transformers-definition module with torch.set_num_threads(1) and with every core.
"""

from __future__ import annotations

import argparse
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
    ONNX_GATES,
    TorchHiddenStates,
    check_batches,
    compare_outputs,
    convert_fp16,
    export_onnx,
    model_inputs,
    onnx_rtf,
    onnx_session,
    per_figures,
    quantize_int8,
)
from core.models import load_model


def torch_rtf(model: Any, sample_rate: int, threads: int, seconds: float = 10.0, runs: int = 3) -> float:
    """Real-time factor of the PyTorch graph the ONNX files are exported from (TorchHiddenStates), not of the
    SpeechEncoder that `core.evaluation.real_time_factor` times, so that every variant runs the same graph."""
    graph = TorchHiddenStates(model).module
    x = np.random.default_rng(0).standard_normal(int(seconds * sample_rate)).astype(np.float32)
    inputs = [torch.from_numpy(v) for v in model_inputs(model, [x]).values()]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            graph(*inputs)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                graph(*inputs)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return float(np.median(times)) / seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("student", type=Path)
    parser.add_argument("audio", type=Path, help="audio dir; PER needs train/test splits with arpabet labels")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--check-utterances", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-per", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = load_model(args.student).eval()
    sr = model.config.sample_rate
    held, calib = held_out_audio(scan_audio(args.audio), sr, seed=args.seed, max_items=args.check_utterances)
    batches = check_batches(model, held)
    graph = TorchHiddenStates(model).module
    with torch.no_grad():
        reference = [graph(*(torch.from_numpy(v) for v in b.values()))[0].numpy() for b in batches]
    all_cores = os.cpu_count() or 1
    rows: dict[str, dict[str, Any]] = {
        "pytorch_fp32": {
            "file": "model.safetensors",
            "size_bytes": (args.student / "model.safetensors").stat().st_size,
            "rtf_cpu_1_thread": torch_rtf(model, sr, 1, runs=args.runs),
            "rtf_cpu_all_threads": torch_rtf(model, sr, all_cores, runs=args.runs),
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {
            "onnx_fp32": d / "model.onnx",
            "onnx_fp16": d / "model_fp16.onnx",
            "onnx_int8_dynamic": d / "model_quantized_dynamic.onnx",
            "onnx_int8_static": d / "model_quantized_static.onnx",
        }
        export_onnx(model, files["onnx_fp32"])
        convert_fp16(files["onnx_fp32"], files["onnx_fp16"])
        quantize_int8(files["onnx_fp32"], files["onnx_int8_dynamic"], "dynamic")
        quantize_int8(
            files["onnx_fp32"], files["onnx_int8_static"], "static", [model_inputs(model, [w]) for w in calib]
        )
        for name, path in files.items():
            session = onnx_session(path)
            got = [session.run(None, b)[0] for b in batches]
            layers = compare_outputs(model, batches, reference, got)
            rows[name] = {
                "file": path.name,
                "size_bytes": path.stat().st_size,
                "layers": layers,
                "min_cka": min(x["cka"] for x in layers),
                "min_cosine": min(x["cosine"] for x in layers),
                "rtf_cpu_1_thread": onnx_rtf(path, sr, threads=1, runs=args.runs),
                "rtf_cpu_all_threads": onnx_rtf(path, sr, threads=0, runs=args.runs),
            }
        if not args.no_per:
            from core.evaluation.dataset import load_probe_data

            pers = per_figures(model, files, load_probe_data(args.audio, tasks=("pr",)), seed=args.seed)
            rows["pytorch_fp32"]["per"] = pers["pytorch_fp32"]
            for name in files:
                rows[name]["per"] = pers[name]
    num = model.num_layers + 1
    result = {
        "student": str(args.student),
        "audio": str(args.audio),
        "num_hidden_states": num,
        "middle": num // 2,
        "check_utterances": len(held),
        "calibration_utterances": len(calib),
        "check_batches": [list(b["input_values"].shape) for b in batches],
        "gates": ONNX_GATES,
        "rows": rows,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus": all_cores,
            "machine": platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return result


def render(result: dict[str, Any]) -> str:
    mid, last = result["middle"], result["num_hidden_states"] - 1
    head = (
        f"| variant | file | size (MB) | RTF CPU 1 thread | RTF CPU all | cosine h{mid} | CKA h{mid} | "
        f"cosine h{last} | CKA h{last} | min CKA (all {last + 1}) | PER |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, row in result["rows"].items():
        layers = row.get("layers")

        def cell(i: int, key: str, layers: Any = layers) -> str:
            return f"{layers[i][key]:.5f}" if layers else "(reference)"

        per = f"{row['per']:.4f}" if "per" in row else "-"
        min_cka = f"{row['min_cka']:.5f}" if "min_cka" in row else "-"
        lines.append(
            f"| {name} | {row['file']} | {row['size_bytes'] / 1e6:.2f} | {row['rtf_cpu_1_thread']:.4f} | "
            f"{row['rtf_cpu_all_threads']:.4f} | {cell(mid, 'cosine')} | {cell(mid, 'cka')} | "
            f"{cell(last, 'cosine')} | {cell(last, 'cka')} | {min_cka} | {per} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

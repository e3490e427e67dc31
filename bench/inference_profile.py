"""Where a student's inference time goes (issue 25: "profile first, then act on the top entries"): the
teacher and a pruned student, one utterance, batch 1, profiled in PyTorch fp32 (torch.profiler) and in
onnxruntime fp32 and int8 (`static_conv`, the int8 export's mode for a fast student; onnxruntime's own
profiler), each by operator and by region of the model.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python -m bench.inference_profile \\
        ../shared/teachers/hubert-mini \\
        --student-report bench/results/latency/report-hubert-speedup4-s0.json \\
        --json bench/results/inference_profile.json --markdown bench/results/inference_profile.md

The student is a student directory (`--student DIR`) or the shape in a report.json's `student` section
(`--student-report`: the teacher pruned to that many heads, FFN units and conv channels per layer, the units
the first ones: its weights are the teacher's, its time is the shape's). Per runtime and model: `--rounds`
passes after one untimed, each profiled; the figures are milliseconds per pass.

- by operator: PyTorch's self CPU time per aten op; onnxruntime's node time per op type (a fused node counts
  under its fused type);
- by region: conv front end (the feature extractor), projection (its layer norm and linear), positional conv,
  attention (the layers' attention blocks), FFN (their feed-forwards), and the rest (layer norms, residuals,
  the glue between them). PyTorch regions are inclusive times of module forwards; onnxruntime's come from the
  exported node names (which carry the module path).

Measure on a quiet machine: the shares hold under load, the milliseconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.output import write_outputs
from core.calibrate.latency import cpu_model
from core.evaluation.speed import SECONDS
from core.export.onnx import onnx_session, quantize_int8, timing_feeds, write_onnx
from core.models import SpeechEncoder, load_model, make_student
from core.timing import torch_threads

REGIONS = ("conv front end", "projection", "positional conv", "attention", "ffn", "rest")
TOP = 12


def region_of(name: str) -> str:
    """The region of a module path or an ONNX node name (which carries the module path: `/encoder/layers.3/
    attention/...`, or `encoder.layers.3.attention...` in initializer-driven names)."""
    n = name.replace("/", ".")
    if "feature_extractor" in n:
        return "conv front end"
    if "feature_projection" in n:
        return "projection"
    if "pos_conv" in n:
        return "positional conv"
    if ".attention" in n:
        return "attention"
    if "feed_forward" in n:
        return "ffn"
    return "rest"


def shaped_student(teacher: SpeechEncoder, architecture: dict[str, Any]) -> SpeechEncoder:
    """The teacher pruned to `architecture` (a report's `student`: per layer heads and ffn, conv_channels),
    keeping the first units of each mask."""
    student = make_student(teacher)
    student.eval()
    counts = list(architecture["conv_channels"])
    for layer in architecture["layers"]:
        counts += [layer["heads"], layer["ffn"]]
    hcs = list(student.hard_concretes())
    if len(hcs) != len(counts):
        raise SystemExit(f"the architecture has {len(counts)} masks, the teacher {len(hcs)}")
    for hc, keep in zip(hcs, counts):
        override = torch.zeros(hc.n, dtype=torch.bool)
        override[: int(keep)] = True
        hc.keep_override = override
    student.prune()
    return student


def _torch_profile(model: SpeechEncoder, seconds: float, rounds: int, threads: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, record_function

    sr = model.config.sample_rate
    x = torch.from_numpy(timing_feeds(sr, seconds)["input_values"])
    lengths = torch.tensor([x.shape[1]])
    contexts: dict[int, Any] = {}
    handles = []
    leaves = {
        name: m
        for name, m in model.named_modules()
        if name in ("feature_extractor", "feature_projection", "encoder.pos_conv")
        or name.endswith(".attention")
        or name.endswith(".feed_forward")
    }
    for name, m in leaves.items():

        def pre(mod: Any, args: Any, name: str = name) -> None:
            contexts[id(mod)] = record_function(f"region::{region_of(name)}")
            contexts[id(mod)].__enter__()

        def post(mod: Any, args: Any, out: Any) -> None:
            contexts.pop(id(mod)).__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            model(x, lengths)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(rounds):
                    with record_function("region::total"):
                        model(x, lengths)
    finally:
        for h in handles:
            h.remove()
    ops: dict[str, float] = {}
    regions: dict[str, float] = defaultdict(float)
    total = 0.0
    for ev in prof.key_averages():
        if ev.key.startswith("region::"):
            if ev.key == "region::total":
                total = ev.cpu_time_total / 1000 / rounds
            else:
                regions[ev.key.split("::", 1)[1]] += ev.cpu_time_total / 1000 / rounds
        elif ev.key.startswith("aten::") and ev.self_cpu_time_total > 0:
            ops[ev.key] = ev.self_cpu_time_total / 1000 / rounds
    regions["rest"] = max(0.0, total - sum(regions.values()))
    return {"total_ms": total, "ops_ms": ops, "regions_ms": dict(regions)}


def _onnx_profile(path: Path, sr: int, seconds: float, rounds: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = timing_feeds(sr, seconds)
    session.run(None, feeds)
    for _ in range(rounds):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    ops: dict[str, float] = defaultdict(float)
    regions: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        # only the timed passes: the untimed first run is the first model_run
        if runs and e["ts"] < runs[0]["ts"] + runs[0]["dur"]:
            continue
        ms = e["dur"] / 1000 / rounds
        ops[e["args"].get("op_name", "?")] += ms
        regions[region_of(e["name"])] += ms
    total = float(np.median([r["dur"] for r in runs[1:]])) / 1000 if len(runs) > 1 else sum(ops.values())
    return {"total_ms": total, "ops_ms": dict(ops), "regions_ms": dict(regions)}


def profile_models(models: dict[str, SpeechEncoder], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, model in models.items():
        out[name] = {"torch": _torch_profile(model, args.seconds, args.rounds, args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            sr = model.config.sample_rate
            fp32 = Path(tmp) / f"{name}.onnx"
            write_onnx(model, fp32)
            int8 = Path(tmp) / f"{name}.int8.onnx"
            quantize_int8(fp32, int8, "static_conv", [timing_feeds(sr, args.seconds)])
            for runtime, path in (("onnx-fp32", fp32), ("onnx-int8", int8)):
                onnx_session(path, args.threads)  # fails early on a file onnxruntime cannot load
                out[name][runtime] = _onnx_profile(path, sr, args.seconds, args.rounds, args.threads)
    return out


def _table(result: dict[str, Any], key: str, names: list[str], rows: list[str]) -> list[str]:
    lines = ["| " + key + " | " + " | ".join(f"{n} ms | {n} share" for n in names) + " |"]
    lines.append("|---" * (1 + 2 * len(names)) + "|")
    for row in rows:
        cells = []
        for n in names:
            ms = result[n].get(key_field(key), {}).get(row, 0.0)
            total = result[n]["total_ms"]
            cells += [f"{ms:.1f}", f"{100 * ms / total:.1f}%" if total else "-"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def key_field(key: str) -> str:
    return "regions_ms" if key == "region" else "ops_ms"


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Where inference time goes: teacher and student, PyTorch fp32, onnxruntime fp32 and int8",
        "",
        f"`{report['command']}`",
        "",
        f"One {report['seconds']:g} s utterance, batch 1, {report['threads']} thread(s), {report['rounds']} "
        f"profiled passes after one untimed; CPU {m['cpu']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}; "
        f"OMP_NUM_THREADS={m['omp_num_threads']}; load average (1 min) before/after: "
        f"{report['load_before']:.2f} / {report['load_after']:.2f}. Student: {report['student']}.",
        "",
    ]
    names = list(report["models"])
    for runtime in ("torch", "onnx-fp32", "onnx-int8"):
        result = {n: report["models"][n][runtime] for n in names}
        totals = ", ".join(f"{n} {result[n]['total_ms']:.1f} ms" for n in names)
        lines += [f"## {runtime}: {totals} per pass", "", "By region:", ""]
        lines += _table(result, "region", names, list(REGIONS))
        ranked: dict[str, float] = defaultdict(float)
        for n in names:
            for op, ms in result[n]["ops_ms"].items():
                ranked[op] = max(ranked[op], ms / result[n]["total_ms"] if result[n]["total_ms"] else 0.0)
        top = sorted(ranked, key=lambda op: -ranked[op])[:TOP]
        lines += ["", f"Top {len(top)} operators (by the larger share of the two models):", ""]
        lines += _table(result, "operator", names, top)
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--student", type=Path, help="a student directory")
    g.add_argument("--student-report", type=Path, help="a report.json whose `student` shape is profiled")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import sys

    import onnxruntime

    args = parse_args(argv)
    teacher = load_model(args.teacher).eval()
    if args.student is not None:
        student = load_model(args.student).eval()
        described = str(args.student)
    else:
        architecture = json.loads(args.student_report.read_text())["student"]
        student = shaped_student(teacher, architecture)
        described = (
            f"the shape of {args.student_report} (heads {[x['heads'] for x in architecture['layers']]}, FFN "
            f"{[x['ffn'] for x in architecture['layers']]}, conv {architecture['conv_channels']})"
        )
    load_before = os.getloadavg()[0]
    models = profile_models({"teacher": teacher, "student": student}, args)
    report = {
        "benchmark": "inference_profile",
        "command": "python -m bench.inference_profile " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": args.seconds,
        "threads": args.threads,
        "rounds": args.rounds,
        "student": described,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "machine": {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "models": models,
    }
    write_outputs(report, format_markdown(report), args.json, args.markdown)
    return report


if __name__ == "__main__":
    main()

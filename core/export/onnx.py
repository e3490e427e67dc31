"""ONNX: fp32, fp16 and int8 variants of a student, each verified against PyTorch fp32 before it is offered
(docs/algorithm.md §6): linear CKA of every hidden state on held-out audio and, when the audio has phone
labels, the PER of a probe trained on fp32 features.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import CheckpointError
from core.evaluation.speed import RUNS_ENV, SECONDS, default_runs
from core.models import SpeechEncoder
from core.models.heads import TaskHead
from core.timing import json_from_fresh_process

if TYPE_CHECKING:  # the cost model's timer types (calibrate's scipy fit stays out of this import)
    from core.calibrate.latency import Timer, TimerFactory

ONNX_VARIANTS = ("fp32", "fp16", "int8")
# The Hub's names for these encoders' ONNX files (also used inside the hf export's onnx/ folder).
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_quantized.onnx"}
ONNX_ARTIFACTS = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}
# A variant is offered only if every hidden state keeps linear CKA >= min_cka with PyTorch fp32 on held-out
# audio and, when the audio has phone labels, a probe trained on fp32 features loses at most
# max_per_increase of PER (a fraction, as the probes report it: 0.01 = one point) when it reads the variant's
# features (docs/algorithm.md §6).
# min_decision_agreement: a task student's head (argmax of its logits) against PyTorch fp32, per frame or
# utterance; set beside the PER gates (a 3-point PER rise at int8 is ~3% of decisions changed), not measured
# on a real task student yet. An x-vector head's embeddings have no argmax: the same number bounds their
# smallest cosine similarity with PyTorch fp32's (`embedding_min_cosine`).
ONNX_GATES: dict[str, dict[str, float]] = {
    "fp32": {"min_cka": 0.9999, "max_per_increase": 0.005, "min_decision_agreement": 0.999},
    "fp16": {"min_cka": 0.99, "max_per_increase": 0.01, "min_decision_agreement": 0.99},
    "int8": {"min_cka": 0.97, "max_per_increase": 0.03, "min_decision_agreement": 0.95},
}
INT8_MODES = ("dynamic", "static", "static_conv")
DEFAULT_INT8_MODE = "dynamic"
OPSET = 17


def parse_onnx_variants(value: bool | str | Sequence[str] | None) -> list[str]:
    """true -> ["fp32"], false/None -> [], "fp16,int8" or a list -> those (canonical order, no repeats)."""
    if value is None or value is False:
        return []
    if value is True:
        return ["fp32"]
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    unknown = [v for v in items if v not in ONNX_VARIANTS]
    if unknown:
        raise ValueError(f"unknown ONNX variant(s) {unknown}; choose from {', '.join(ONNX_VARIANTS)}")
    return [v for v in ONNX_VARIANTS if v in items]


class _OnnxGraph(nn.Module):
    """(input_values (batch, time), attention_mask (batch, time)) ->
    (hidden_states (L+1, batch, frame, feature), last_hidden_state (batch, frame, feature)), as transformers'
    output_hidden_states=True defines them (core.export.hf); a task model (a student that kept its teacher's
    head) adds its `logits` (CTC and frame heads: (batch, frame, outputs); utterance heads: (batch,
    outputs))."""

    def __init__(self, hf_model: nn.Module, task: str | None = None) -> None:
        super().__init__()
        self.hf_model, self.task = hf_model, task  # task: the task model's output ("logits", "embeddings")

    def forward(self, input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.hf_model(input_values, attention_mask=attention_mask, output_hidden_states=True)
        if (
            self.task
        ):  # last_hidden_state from the last hidden state (the final LayerNorm in the Large layout)
            encoder = self.hf_model.skillkd.encoder
            last = out.hidden_states[-1]
            last = encoder.layer_norm(last) if encoder.layer_norm_first else last
            return torch.stack(out.hidden_states), last, getattr(out, self.task)
        return torch.stack(out.hidden_states), out.last_hidden_state


def torch_graph(model: SpeechEncoder, head: TaskHead | None = None) -> _OnnxGraph:
    """The PyTorch graph the ONNX files are exported from: transformers' definitions (core.export.hf)."""
    from core.export.hf import hf_module, hf_task_head_module

    if head is None:
        return _OnnxGraph(hf_module(model.eval())).eval()
    return _OnnxGraph(hf_task_head_module(model.eval(), head), task=head.output_name).eval()


def model_inputs(model: SpeechEncoder, waveforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Raw waveforms -> the graph's inputs, as Wav2Vec2FeatureExtractor makes them: right-padded with zeros,
    normalised per utterance over its own samples when the model was trained so (`do_normalize`)."""
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.int64)
    batch = torch.zeros(len(waveforms), int(lengths.max()))
    for row, w in enumerate(waveforms):
        batch[row, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    if model.config.normalize_waveform:
        from core.models.encoder import normalize_waveforms

        batch = normalize_waveforms(batch, lengths)
    mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_values": batch.numpy(), "attention_mask": mask.numpy()}


def onnx_session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_onnx(
    model: SpeechEncoder, path: Path, *, seconds: float = 2.0, head: TaskHead | None = None
) -> tuple[_OnnxGraph, list[str]]:
    """Trace `model` (with its task `head`) to fp32 ONNX at `path`, dynamic batch and time, unchecked; returns
    the traced graph and its output names (`export_onnx` checks the file)."""
    graph = torch_graph(model, head)
    outputs = ["hidden_states", "last_hidden_state"]
    axes: dict[str, dict[int, str]] = {
        "input_values": {0: "batch", 1: "time"},
        "attention_mask": {0: "batch", 1: "time"},
        "hidden_states": {1: "batch", 2: "frame"},
        "last_hidden_state": {0: "batch", 1: "frame"},
    }
    if head is not None:
        outputs.append(head.output_name)
        axes[head.output_name] = {0: "batch", 1: "frame"} if head.frame_level else {0: "batch"}
    sr = model.config.sample_rate
    example = model_inputs(
        model, [np.random.default_rng(0).standard_normal(int(seconds * sr)).astype(np.float32)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (torch.from_numpy(example["input_values"]), torch.from_numpy(example["attention_mask"])),
            str(path),
            input_names=["input_values", "attention_mask"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return graph, outputs


def export_onnx(
    model: SpeechEncoder,
    path: Path,
    *,
    seconds: float = 2.0,
    atol: float = 1e-3,
    head: TaskHead | None = None,
) -> dict[str, Any]:
    """Export fp32 ONNX (dynamic batch and time) and check it against PyTorch with onnxruntime on a padded
    batch of two lengths other than the traced one (every output, `logits` included for a task `head`).
    Returns the check's figures."""
    graph, outputs = write_onnx(model, path, seconds=seconds, head=head)
    sr = model.config.sample_rate
    rng = np.random.default_rng(1)
    check = model_inputs(
        model,
        [
            rng.standard_normal(int(seconds * sr * 1.37)).astype(np.float32),
            rng.standard_normal(int(seconds * sr * 0.81)).astype(np.float32),
        ],
    )
    with torch.no_grad():
        expected = [t.numpy() for t in graph(*(torch.from_numpy(v) for v in check.values()))]
    got = onnx_session(path).run(None, check)
    for name, g, e in zip(outputs, got, expected, strict=True):  # numpy would broadcast a wrong shape away
        if g.shape != e.shape:
            raise CheckpointError(f"ONNX output {name} has shape {list(g.shape)}, PyTorch's {list(e.shape)}")
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    if not np.isfinite(diff) or diff > atol:
        raise CheckpointError(f"ONNX export differs from PyTorch by {diff:.3g} (> {atol})")
    return {
        "file": path.name,
        "max_abs_diff": diff,
        "opset": OPSET,
        "checked_shape": list(check["input_values"].shape),
        "outputs": outputs,
    }


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(converted, str(dst))


class CalibrationReader:
    """onnxruntime CalibrationDataReader over a list of input dicts."""

    def __init__(self, inputs: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def first_conv(path: Path) -> list[str]:
    """The name of the graph's first Conv node (graph order is topological): the feature extractor's conv on
    the raw waveform, which static int8 leaves in fp32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv"][:1]


def int8_mode_for(spec: dict[str, Any] | None) -> str:
    """The int8 mode a model's export uses by default: `static_conv` for a student trained int8-aware (its
    spec's `int8_aware`: it learned features that survive the conv front end's rounding) or budgeted for
    `speed_target` onnx-int8 (its speed was fitted on static_conv files: its int8 export is that file), else
    DEFAULT_INT8_MODE."""
    if spec and (spec.get("int8_aware") or spec.get("speed_target") == "onnx-int8"):
        return "static_conv"
    return DEFAULT_INT8_MODE


def student_int8_mode(model_dir: Path) -> str:
    """`int8_mode_for` the spec in a student directory's report.json (DEFAULT_INT8_MODE without one)."""
    try:
        spec = json.loads((model_dir / "report.json").read_text()).get("spec")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_INT8_MODE
    return int8_mode_for(spec if isinstance(spec, dict) else None)


def quantize_int8(
    src: Path,
    dst: Path,
    mode: str = DEFAULT_INT8_MODE,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> None:
    """int8 weights: `dynamic` (MatMul/Gemm weights int8, activations quantised per call), `static` (QDQ over
    MatMul/Gemm, activation ranges calibrated on `calibration` inputs) or `static_conv` (QDQ over every Conv
    but the first, on the raw waveform, and every MatMul/Gemm: uint8 activations, int8 weights per output
    channel, calibrated). Only `static_conv` is faster than fp32 on a pruned student on x86 CPUs (its conv
    front end holds most of the time; `dynamic` is 1.00x there, 1.20x on the unpruned teacher): 1.89x on a
    4x latency student of wavlm-mini over fp32 ONNX on one thread, once `tune_static_conv` has fused its
    GELUs and dropped its inferred shapes (1.54x without); but the front end's activations are heavy-tailed
    (after GELU: median 0.00, max 24.9), so per-tensor uint8 loses most of them and the features drift
    (linear CKA 0.90 on hubert-mini): below the int8 gate, which then rejects the file
    (bench/results/onnx_int8.md). `static_conv`'s activation ranges are the mean over the calibration
    utterances of each one's min and max (onnxruntime's moving-average MinMax; int8-aware training tracks its
    ranges alike), not their global min and max, which let one outlier set the step of a whole tensor: on a
    4x latency student of hubert-mini, linear CKA 0.899 -> 0.920, and 0.940 -> 0.959 trained int8-aware."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {INT8_MODES}, not {mode!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
            )
            return
        if not calibration:
            raise ValueError("static int8 quantisation needs calibration inputs")
        conv = mode == "static_conv"
        quantize_static(
            str(prepared),
            str(dst),
            CalibrationReader(calibration),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8 if conv else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"] if conv else ["MatMul", "Gemm"],
            nodes_to_exclude=first_conv(prepared) if conv else [],
            extra_options={"CalibMovingAverage": True} if conv else {},
        )
        if conv:
            tune_static_conv(dst)


def tune_static_conv(path: Path, *, drop_shapes: bool = True) -> dict[str, int]:
    """Two rewrites of a `static_conv` file, in place, that keep its arithmetic and make onnxruntime run it
    faster on x86 CPUs (bench/results/onnx_int8.md, "GELU and SkipLayerNormalization"):
    - each GELU spelled Div/Erf/Add/Mul/Mul becomes one com.microsoft Gelu node (onnxruntime.transformers'
      FusionGelu). onnxruntime fuses the pattern itself after a Conv but not after a DequantizeLinear, which
      is where every quantised conv layer's GELU sits: unfused, the five nodes run one by one;
    - the file keeps no `value_info` (the intermediate shapes the quantiser's pre-processing infers). With
      them onnxruntime fuses each encoder layer's residual Add and LayerNormalization into
      SkipLayerNormalization, whose CPU kernel took 7.6 of a 45 ms pass on one thread where the unfused pair
      takes about 1 ms (the fp32 file, without those shapes, is never fused).
    Returns how many GELUs were fused and value_info entries dropped (`drop_shapes` False keeps them: the
    benchmark's ablation)."""
    import onnx
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    graph = model.model.graph
    erf_before = sum(n.op_type == "Erf" for n in graph.node)
    FusionGelu(model).apply()
    model.prune_graph()
    # a fused node is named "Gelu_N": name it after the module its output belongs to, as the exporter names
    # nodes, so that profiles still attribute its time to the conv layer or FFN it runs in
    names = {n.name for n in graph.node}
    for node in graph.node:
        if node.op_type == "Gelu" and not node.name.startswith("/") and "/" in node.output[0]:
            name = node.output[0].rsplit("/", 1)[0] + "/Gelu"
            if name not in names:
                names.add(name)
                node.name = name
    fused = erf_before - sum(n.op_type == "Erf" for n in graph.node)
    dropped = len(graph.value_info) if drop_shapes else 0
    if drop_shapes:
        del graph.value_info[:]
    model.save_model_to_file(str(path))
    return {"gelu_fused": fused, "value_info_dropped": dropped}


def timing_feeds(sample_rate: int, seconds: float | None = None) -> dict[str, np.ndarray]:
    """The input every speed figure of an ONNX file is taken on: one `seconds`-long utterance (SECONDS by
    default) of seeded Gaussian noise, batch 1, no padding."""
    seconds = SECONDS if seconds is None else seconds
    x = np.random.default_rng(0).standard_normal((1, int(seconds * sample_rate))).astype(np.float32)
    return {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)}


def onnx_speedups(
    paths: dict[str, Path], sample_rate: int, *, threads: int = 1, seconds: float | None = None, runs: int = 5
) -> dict[str, float]:
    """Median seconds per run of each ONNX file on one `seconds`-long utterance, the files run in turn
    (round-robin after a warm-up of each), so that a busy machine slows them alike."""
    import time

    feeds = timing_feeds(sample_rate, seconds)
    sessions = {name: onnx_session(path, threads) for name, path in paths.items()}
    for session in sessions.values():
        session.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(max(1, runs)):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def onnx_speedups_in_fresh_process(
    paths: dict[str, Path], sample_rate: int, *, threads: int = 1, seconds: float | None = None, runs: int = 5
) -> dict[str, float]:
    """`onnx_speedups` in a new Python process (`python -m core.export.onnx`): the latency targets' clock is
    never the job's own process, on onnxruntime as in PyTorch (`core.timing`)."""
    spec = {
        "paths": {name: str(path) for name, path in paths.items()},
        "sample_rate": sample_rate,
        "threads": threads,
        "seconds": seconds,
        "runs": runs,
    }
    passes = (max(runs, 1) + 1) * len(paths)
    what = "timing the ONNX files"
    out = json_from_fresh_process(
        "core.export.onnx", [json.dumps(spec)], threads, what, passes=passes, seconds=seconds or SECONDS
    )
    if not isinstance(out, dict) or set(out) != set(paths):
        raise RuntimeError(f"the timing process returned {out!r} for {sorted(paths)}")
    return {name: float(out[name]) for name in paths}


def _onnx_files_timer(seconds: float, threads: int, rounds: int, int8_mode: str | None) -> Timer:
    def timer(models: list[SpeechEncoder]) -> list[float]:
        sr = models[0].config.sample_rate
        # the ranges do not change the quantised graph's work: the timing input calibrates every int8 file
        calibration = [timing_feeds(sr, seconds)] if int8_mode is not None else []
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for i, model in enumerate(models):
                fp32 = Path(tmp) / f"m{i}.onnx"
                write_onnx(copy.deepcopy(model).cpu().eval(), fp32)
                paths[f"m{i}"] = fp32
                if int8_mode is not None:
                    paths[f"m{i}"] = Path(tmp) / f"m{i}.int8.onnx"
                    quantize_int8(fp32, paths[f"m{i}"], int8_mode, calibration)
            median = onnx_speedups_in_fresh_process(paths, sr, threads=threads, seconds=seconds, runs=rounds)
        return [median[f"m{i}"] for i in range(len(models))]

    return timer


def onnx_timer(seconds: float, threads: int, rounds: int) -> Timer:
    """The latency cost model's timer on the `onnx-fp32` target (`core.calibrate.latency.TimerFactory`):
    each model traced to fp32 ONNX as the export traces it, then the files run in turn in onnxruntime with
    `threads` intra-op threads on one `seconds`-long utterance, `rounds` passes each after one untimed, in a
    fresh process (`onnx_speedups_in_fresh_process`); the median per model."""
    return _onnx_files_timer(seconds, threads, rounds, None)


def onnx_int8_timer(seconds: float, threads: int, rounds: int) -> Timer:
    """The timer of the `onnx-int8` target: as `onnx_timer`, each fp32 file then quantised as the int8
    export of an int8-aware student is (`static_conv`: QDQ over every Conv but the first and every
    MatMul/Gemm, per-channel int8 weights; the only int8 mode faster than fp32 on a pruned student), and the
    int8 files timed. The teacher is timed in int8 too: a speed-up on this target is int8 student over int8
    teacher (over the teacher's fp32 ONNX it is larger: bench/results/onnx_int8.md)."""
    return _onnx_files_timer(seconds, threads, rounds, "static_conv")


# the latency cost model's timers on targets other than PyTorch on the CPU (`speed_target`)
LATENCY_TIMERS: dict[str, TimerFactory] = {"onnx-fp32": onnx_timer, "onnx-int8": onnx_int8_timer}


# ---------------------------------------------------------------------------------------------- verification
def _frame_lengths(model: SpeechEncoder, attention_mask: np.ndarray) -> np.ndarray:
    return model.frame_lengths(torch.from_numpy(attention_mask.sum(-1))).numpy()


def compare_outputs(
    model: SpeechEncoder,
    batches: list[dict[str, np.ndarray]],
    reference: list[np.ndarray],
    variant: list[np.ndarray],
) -> list[dict[str, float]]:
    """Per hidden state: mean cosine over valid frames, linear CKA over all valid frames, max |diff|.
    reference / variant: per batch, hidden states (L+1, batch, frame, feature)."""
    from core.calibrate.cka import linear_cka

    num = reference[0].shape[0]
    ref_frames: list[list[np.ndarray]] = [[] for _ in range(num)]
    var_frames: list[list[np.ndarray]] = [[] for _ in range(num)]
    for inputs, ref, var in zip(batches, reference, variant, strict=True):
        for row, frames in enumerate(_frame_lengths(model, inputs["attention_mask"])):
            for layer in range(num):
                ref_frames[layer].append(ref[layer, row, :frames].astype(np.float64))
                var_frames[layer].append(var[layer, row, :frames].astype(np.float64))
    out = []
    for layer in range(num):
        x, y = np.concatenate(ref_frames[layer]), np.concatenate(var_frames[layer])
        cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-12)
        out.append(
            {
                "cosine": float(cos.mean()),
                "cka": float(linear_cka(x, y)),
                "max_abs_diff": float(np.abs(x - y).max()),
            }
        )
    return out


def onnx_rtf(
    path: Path, sample_rate: int, *, threads: int = 1, seconds: float | None = None, runs: int | None = None
) -> float:
    """onnxruntime CPU real-time factor (compute seconds per audio second, median of `runs`) on one
    `seconds`-long utterance; threads=0 means onnxruntime's default (all cores). Defaults: the reference
    utterance of every speed figure (`core.evaluation.speed.SECONDS`, 10 s) and `SKILLKD_SPEED_RUNS`
    passes."""
    seconds = SECONDS if seconds is None else seconds
    runs = default_runs() if runs is None else runs
    median = onnx_speedups({"file": path}, sample_rate, threads=threads, seconds=seconds, runs=runs)
    return median["file"] / seconds


class OnnxRepresentations:
    """An ONNX file as evaluation's RepresentationModel: raw waveforms + lengths -> transformers' hidden
    states and frame lengths (used to score a probe on a variant's features)."""

    def __init__(self, path: Path, model: SpeechEncoder, threads: int = 0) -> None:
        self.session = onnx_session(path, threads)
        self.model = model
        self.config = model.config

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        inputs = model_inputs(self.model, [w[: int(n)].cpu().numpy() for w, n in zip(waveforms, lengths)])
        (hidden,) = self.session.run(["hidden_states"], inputs)
        return list(torch.from_numpy(hidden)), self.model.frame_lengths(lengths.cpu())

    def num_params(self) -> int:
        return self.model.num_params()


class TorchHiddenStates:
    """The PyTorch fp32 reference with transformers' hidden-state definitions, as a RepresentationModel."""

    def __init__(self, model: SpeechEncoder, head: TaskHead | None = None) -> None:
        self.module = torch_graph(model, head)
        self.model = model
        self.config = model.config

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        inputs = model_inputs(self.model, [w[: int(n)].cpu().numpy() for w, n in zip(waveforms, lengths)])
        with torch.no_grad():
            hidden = self.module(*(torch.from_numpy(v) for v in inputs.values()))[0]
        return list(hidden), self.model.frame_lengths(lengths.cpu())

    def num_params(self) -> int:
        return self.model.num_params()


def check_batches(model: SpeechEncoder, waveforms: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Each held-out utterance alone, plus one padded batch of the longest and the shortest."""
    batches = [model_inputs(model, [w]) for w in waveforms]
    if len(waveforms) >= 2:
        order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]))
        batches.append(model_inputs(model, [waveforms[order[-1]], waveforms[order[0]]]))
    return batches


def per_figures(
    model: SpeechEncoder, files: dict[str, Path], probe_data: Any, *, seed: int = 0
) -> dict[str, Any]:
    """PER of a phone probe trained on PyTorch fp32 features (train split), scored on each variant's features
    of the test split; probe training is deterministic given `seed`, so every variant meets the same probe."""
    from core.evaluation.features import FeatureSet, extract_features
    from core.evaluation.run import run_probes

    sr = model.config.sample_rate
    reference = extract_features(
        TorchHiddenStates(model), probe_data.catalog, name="pytorch-fp32", sample_rate=sr
    )
    out: dict[str, Any] = {"pytorch_fp32": run_probes(reference, probe_data, seed=seed)["pr"]["per"]}
    test_ids = {item.id for item in probe_data.test}
    test_items = [item for item in probe_data.catalog.items if item.id in test_ids]
    for variant, path in files.items():
        feats = extract_features(OnnxRepresentations(path, model), test_items, name=variant, sample_rate=sr)
        mixed = FeatureSet(
            name=variant,
            reps={**{k: v for k, v in reference.reps.items() if k not in test_ids}, **feats.reps},
            num_reps=reference.num_reps,
            dim=reference.dim,
        )
        out[variant] = run_probes(mixed, probe_data, seed=seed)["pr"]["per"]
    return out


def _write_variants(
    model: SpeechEncoder,
    out_dir: Path,
    fp32: Path,
    chosen: list[str],
    int8_mode: str,
    calib: list[dict[str, np.ndarray]],
    head: TaskHead | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Export fp32 once to `fp32` (checked against PyTorch), then write each chosen variant from it."""
    fp32_check = export_onnx(model, fp32, head=head)
    files: dict[str, Path] = {}
    for variant in chosen:
        target = out_dir / ONNX_FILES[variant]
        if variant == "fp32":
            shutil.copyfile(fp32, target)
        elif variant == "fp16":
            convert_fp16(fp32, target)
        else:
            quantize_int8(fp32, target, int8_mode, calib)
        files[variant] = target
    return files, fp32_check


def _variant_figures(
    model: SpeechEncoder,
    target: Path,
    batches: list[dict[str, np.ndarray]],
    reference: list[np.ndarray],
    measure_speed: bool,
    reference_logits: list[np.ndarray] | None = None,
    task_output: str = "logits",
) -> dict[str, Any]:
    """Per-layer agreement of a written variant with PyTorch fp32 on the check batches, and its speed; with a
    task head, how often its decisions (argmax of the logits) agree with fp32's, or how close its x-vector
    embeddings are."""
    session = onnx_session(target)
    got = [session.run(["hidden_states"], b)[0] for b in batches]
    layers = compare_outputs(model, batches, reference, got)
    figures: dict[str, Any] = {
        "file": target.name,
        "size_bytes": target.stat().st_size,
        "layers": layers,
        "min_cka": min(x["cka"] for x in layers),
        "min_cosine": min(x["cosine"] for x in layers),
    }
    if reference_logits is not None:
        logits = [session.run([task_output], b)[0] for b in batches]
        if task_output == "embeddings":
            figures["task"] = embedding_agreement(reference_logits, logits)
        else:
            figures["task"] = task_agreement(model, batches, reference_logits, logits)
    if measure_speed and default_runs() > 0:
        figures["rtf_cpu_1_thread"] = onnx_rtf(target, model.config.sample_rate, threads=1)
        figures["rtf_cpu_all_threads"] = onnx_rtf(target, model.config.sample_rate, threads=0)
    elif measure_speed:
        figures["timing"] = f"skipped ({RUNS_ENV}=0)"
    return figures


def task_agreement(
    model: SpeechEncoder,
    batches: list[dict[str, np.ndarray]],
    reference: list[np.ndarray],
    variant: list[np.ndarray],
) -> dict[str, float]:
    """The share of decisions (argmax over the outputs: per valid frame for frame-level logits, per utterance
    otherwise) where a variant agrees with PyTorch fp32, and the largest |difference| of the logits."""
    same = total = 0
    diff = 0.0
    for inputs, ref, var in zip(batches, reference, variant, strict=True):
        if ref.ndim == 3:
            for row, frames in enumerate(_frame_lengths(model, inputs["attention_mask"])):
                r, v = ref[row, :frames], var[row, :frames]
                same += int((r.argmax(-1) == v.argmax(-1)).sum())
                total += int(frames)
                diff = max(diff, float(np.abs(r - v).max()))
        else:
            same += int((ref.argmax(-1) == var.argmax(-1)).sum())
            total += ref.shape[0]
            diff = max(diff, float(np.abs(ref - var).max()))
    return {"decision_agreement": same / max(total, 1), "logits_max_abs_diff": diff}


def embedding_agreement(reference: list[np.ndarray], variant: list[np.ndarray]) -> dict[str, float]:
    """The smallest cosine similarity of a variant's utterance embeddings with PyTorch fp32's, and the
    largest |difference|."""
    cosines, diff = [], 0.0
    for ref, var in zip(reference, variant, strict=True):
        num = (ref * var).sum(-1)
        den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(var, axis=-1)
        cosines += list(num / np.maximum(den, 1e-12))
        diff = max(diff, float(np.abs(ref - var).max()))
    return {"embedding_min_cosine": float(min(cosines)), "embeddings_max_abs_diff": diff}


def _gate_failures(figures: dict[str, Any], gate: dict[str, float], per_fp32: float | None) -> list[str]:
    """Why a variant fails its gate (CKA of its worst hidden state; probe PER when measured; the task head's
    decisions when the student has one); [] if it passes."""
    reasons = []
    task = figures.get("task")
    if task is not None and "embedding_min_cosine" in task:
        if not task["embedding_min_cosine"] >= gate["min_decision_agreement"]:
            reasons.append(
                "the x-vector embeddings' cosine with PyTorch fp32's falls to "
                f"{task['embedding_min_cosine']:.4f} "
                f"(gate {gate['min_decision_agreement']:g})"
            )
    elif task is not None and not task["decision_agreement"] >= gate["min_decision_agreement"]:
        reasons.append(
            f"the task head's decisions agree with PyTorch fp32's on {100 * task['decision_agreement']:.2f}% "
            f"of frames or utterances (gate {100 * gate['min_decision_agreement']:g}%)"
        )
    if not figures["min_cka"] >= gate["min_cka"]:
        worst = min(range(len(figures["layers"])), key=lambda i: figures["layers"][i]["cka"])
        reasons.append(
            f"hidden state {worst} has linear CKA {figures['min_cka']:.4f} with PyTorch fp32 "
            f"(gate {gate['min_cka']})"
        )
    if "per" in figures and per_fp32 is not None and figures["per"] - per_fp32 > gate["max_per_increase"]:
        reasons.append(
            f"probe PER {figures['per']:.4f} vs {per_fp32:.4f} with fp32 features "
            f"(gate +{gate['max_per_increase']})"
        )
    return reasons


def export_onnx_variants(
    model: SpeechEncoder,
    out_dir: Path,
    variants: Sequence[str],
    *,
    held_out: list[np.ndarray] | None = None,
    calibration: list[np.ndarray] | None = None,
    probe_data: Any = None,
    int8_mode: str = DEFAULT_INT8_MODE,
    measure_speed: bool = True,
    seed: int = 0,
    head: TaskHead | None = None,
) -> dict[str, Any]:
    """Write the asked variants to `out_dir` (ONNX_FILES names), verify each against PyTorch fp32 and keep
    only those that pass their gate; with a task `head`, each file also outputs its `logits`, gated on the
    head's decisions. Returns {"variants": {name: figures}, "gates": ..., ...}; a rejected
    variant has "status": "rejected" and a "reason", and its file is removed."""
    chosen = parse_onnx_variants(variants)
    model = model.cpu().eval()
    sr = model.config.sample_rate
    rng = np.random.default_rng(seed)
    if not held_out:  # no audio given: noise, the least a check can use (stated in the report)
        held_out = [rng.standard_normal(int(s * sr)).astype(np.float32) * 0.1 for s in (3.1, 1.7, 2.4)]
    batches = check_batches(model, held_out)
    graph = torch_graph(model, head)
    with torch.no_grad():
        outputs = [graph(*(torch.from_numpy(v) for v in b.values())) for b in batches]
    reference = [out[0].numpy() for out in outputs]
    reference_logits = [out[2].numpy() for out in outputs] if head is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "gates": {v: ONNX_GATES[v] for v in chosen},
        "check_utterances": len(held_out),
        "check_batches": [list(b["input_values"].shape) for b in batches],
        "int8_mode": int8_mode,
        "opset": OPSET,
        "variants": {},
    }
    calib = [model_inputs(model, [w]) for w in (calibration or held_out)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        files, report["fp32_check"] = _write_variants(model, out_dir, fp32, chosen, int8_mode, calib, head)
        for variant, target in files.items():
            report["variants"][variant] = _variant_figures(
                model,
                target,
                batches,
                reference,
                measure_speed,
                reference_logits,
                head.output_name if head is not None else "logits",
            )
            if variant == "int8":
                report["variants"][variant]["int8_mode"] = int8_mode
        if measure_speed and default_runs() > 0 and set(files) - {"fp32"}:
            # each variant against the fp32 file, run in turn on one thread (the figure a user asks for)
            median = onnx_speedups({"reference fp32": fp32, **files}, sr, threads=1, runs=default_runs())
            for variant in files:
                report["variants"][variant]["speedup_vs_onnx_fp32_1_thread"] = round(
                    median["reference fp32"] / median[variant], 3
                )
    if probe_data is not None:
        pers = per_figures(model, files, probe_data, seed=seed)
        report["per_pytorch_fp32"] = pers["pytorch_fp32"]
        for variant in files:
            report["variants"][variant]["per"] = pers[variant]
    for variant, target in files.items():
        figures = report["variants"][variant]
        reasons = _gate_failures(figures, ONNX_GATES[variant], report.get("per_pytorch_fp32"))
        figures["status"] = "rejected" if reasons else "ok"
        if reasons:
            figures["reason"] = "; ".join(reasons)
            target.unlink(missing_ok=True)
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m core.export.onnx SPEC`: the child of `onnx_speedups_in_fresh_process` (SPEC: its JSON)."""
    import sys

    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    paths = {name: Path(path) for name, path in spec["paths"].items()}
    runs, seconds, threads = int(spec["runs"]), spec["seconds"], int(spec["threads"])
    print(
        json.dumps(
            onnx_speedups(paths, int(spec["sample_rate"]), threads=threads, seconds=seconds, runs=runs)
        )
    )


if __name__ == "__main__":
    main()

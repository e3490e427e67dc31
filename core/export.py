"""The export format and its loader (algorithm.md §6).

An exported student is a directory:
    model.safetensors        the encoder's weights (our names, float32)
    config.json              {"format": "skillkd-student", "version": 1, "model": <ModelConfig>, ...}
    distill_heads.safetensors  the cluster projections (only needed to distil further)
    report.json              teacher, sizes, sparsity, clusters, CKA, losses, spec
    cka.png, clusters.json   calibration plots and clusters
    model.onnx, model_fp16.onnx, model_quantized.onnx
                             optional ONNX variants, each verified against PyTorch fp32 (export_onnx_variants)

`load_student(path)` needs only torch + this package and is strict about keys and shapes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .errors import CheckpointError
from .models import FORMAT_VERSION, STUDENT_FORMAT, SpeechEncoder
from .speed import RUNS_ENV, SECONDS, default_runs


def save_student(model: SpeechEncoder, directory: Path, *, metadata: dict[str, Any] | None = None,
                 heads: nn.Module | None = None) -> Path:
    """Write `model` (no masks) as an exported student."""
    if model.config.has_masks:
        raise ValueError("finalise (prune) the student before exporting it")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": STUDENT_FORMAT})
    if heads is not None:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()},
                  str(directory / "distill_heads.safetensors"))
    config = {"format": STUDENT_FORMAT, "version": FORMAT_VERSION, "model": model.config.to_dict(),
              "num_params": model.num_params(), **(metadata or {})}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


# --------------------------------------------------------------------------------------------------------------
# ONNX: fp32, fp16 and int8 variants, each verified against PyTorch fp32 before it is offered
# --------------------------------------------------------------------------------------------------------------
ONNX_VARIANTS = ("fp32", "fp16", "int8")
# The Hub's names for these encoders' ONNX files (also used inside the hf export's onnx/ folder).
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_quantized.onnx"}
ONNX_ARTIFACTS = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}
# A variant is offered only if every hidden state keeps linear CKA >= min_cka with PyTorch fp32 on held-out
# audio and, when the audio has phone labels, a probe trained on fp32 features loses at most
# max_per_increase of PER (a fraction, as the probes report it: 0.01 = one point) when it reads the variant's
# features (docs/algorithm.md §6).
ONNX_GATES: dict[str, dict[str, float]] = {
    "fp32": {"min_cka": 0.9999, "max_per_increase": 0.005},
    "fp16": {"min_cka": 0.99, "max_per_increase": 0.01},
    "int8": {"min_cka": 0.97, "max_per_increase": 0.03},
}
INT8_MODES = ("dynamic", "static")
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
    output_hidden_states=True defines them (core.hf_export)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_values: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.hf_model(input_values, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack(out.hidden_states), out.last_hidden_state


def model_inputs(model: SpeechEncoder, waveforms: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Raw waveforms -> the graph's inputs, as Wav2Vec2FeatureExtractor makes them: right-padded with zeros,
    normalised per utterance over its own samples when the model was trained so (`do_normalize`)."""
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.int64)
    batch = torch.zeros(len(waveforms), int(lengths.max()))
    for row, w in enumerate(waveforms):
        batch[row, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    if model.config.normalize_waveform:
        from .models.encoder import normalize_waveforms

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


def export_onnx(model: SpeechEncoder, path: Path, *, seconds: float = 2.0, atol: float = 1e-3) -> dict[str, Any]:
    """Export fp32 ONNX (dynamic batch and time) and check it against PyTorch with onnxruntime on a padded
    batch of two lengths other than the traced one. Returns the check's figures."""
    from .hf_export import hf_module

    graph = _OnnxGraph(hf_module(model.eval())).eval()
    sr = model.config.sample_rate
    example = model_inputs(model, [np.random.default_rng(0).standard_normal(int(seconds * sr)).astype(np.float32)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            graph, (torch.from_numpy(example["input_values"]), torch.from_numpy(example["attention_mask"])),
            str(path), input_names=["input_values", "attention_mask"],
            output_names=["hidden_states", "last_hidden_state"],
            dynamic_axes={"input_values": {0: "batch", 1: "time"}, "attention_mask": {0: "batch", 1: "time"},
                          "hidden_states": {1: "batch", 2: "frame"}, "last_hidden_state": {0: "batch", 1: "frame"}},
            opset_version=OPSET, dynamo=False,
        )
    rng = np.random.default_rng(1)
    check = model_inputs(model, [rng.standard_normal(int(seconds * sr * 1.37)).astype(np.float32),
                                 rng.standard_normal(int(seconds * sr * 0.81)).astype(np.float32)])
    with torch.no_grad():
        expected = [t.numpy() for t in graph(*(torch.from_numpy(v) for v in check.values()))]
    got = onnx_session(path).run(None, check)
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    if not np.isfinite(diff) or diff > atol:
        raise CheckpointError(f"ONNX export differs from PyTorch by {diff:.3g} (> {atol})")
    return {"path": str(path), "max_abs_diff": diff, "opset": OPSET, "checked_shape": list(check["input_values"].shape)}


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(converted, str(dst))


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over a list of input dicts."""

    def __init__(self, inputs: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(src: Path, dst: Path, mode: str = DEFAULT_INT8_MODE,
                  calibration: list[dict[str, np.ndarray]] | None = None) -> None:
    """int8 weights: `dynamic` (MatMul/Gemm weights int8, activations quantised per call) or `static`
    (QDQ, activation ranges calibrated on `calibration` inputs)."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {INT8_MODES}, not {mode!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
            return
        if not calibration:
            raise ValueError("static int8 quantisation needs calibration inputs")
        quantize_static(str(prepared), str(dst), _CalibrationReader(calibration),  # type: ignore[arg-type]
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])


# ---------------------------------------------------------------------------------------------- verification
def _frame_lengths(model: SpeechEncoder, attention_mask: np.ndarray) -> np.ndarray:
    return model.frame_lengths(torch.from_numpy(attention_mask.sum(-1))).numpy()


def compare_outputs(model: SpeechEncoder, batches: list[dict[str, np.ndarray]],
                    reference: list[np.ndarray], variant: list[np.ndarray]) -> list[dict[str, float]]:
    """Per hidden state: mean cosine over valid frames, linear CKA over all valid frames, max |diff|.
    reference / variant: per batch, hidden states (L+1, batch, frame, feature)."""
    from .cka import linear_cka

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
        out.append({"cosine": float(cos.mean()), "cka": float(linear_cka(x, y)),
                    "max_abs_diff": float(np.abs(x - y).max())})
    return out


def onnx_rtf(path: Path, sample_rate: int, *, threads: int = 1, seconds: float | None = None,
             runs: int | None = None) -> float:
    """onnxruntime CPU real-time factor (compute seconds per audio second, median of `runs`) on one
    `seconds`-long utterance; threads=0 means onnxruntime's default (all cores). Defaults: the reference
    utterance of every speed figure (`core.speed.SECONDS`, 10 s) and `SKILLKD_SPEED_RUNS` passes."""
    import time

    seconds = SECONDS if seconds is None else seconds
    runs = max(1, default_runs() if runs is None else runs)
    session = onnx_session(path, threads)
    x = np.random.default_rng(0).standard_normal((1, int(seconds * sample_rate))).astype(np.float32)
    feeds = {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / seconds


class OnnxRepresentations:
    """An ONNX file as evaluation's RepresentationModel: raw waveforms + lengths -> transformers' hidden
    states and frame lengths (used to score a probe on a variant's features)."""

    def __init__(self, path: Path, model: SpeechEncoder, threads: int = 0) -> None:
        self.session = onnx_session(path, threads)
        self.model = model
        self.config = model.config

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        inputs = model_inputs(self.model, [w[: int(n)].cpu().numpy() for w, n in zip(waveforms, lengths)])
        hidden, _ = self.session.run(None, inputs)
        return list(torch.from_numpy(hidden)), self.model.frame_lengths(lengths.cpu())

    def num_params(self) -> int:
        return self.model.num_params()


class TorchHiddenStates:
    """The PyTorch fp32 reference with transformers' hidden-state definitions, as a RepresentationModel."""

    def __init__(self, model: SpeechEncoder) -> None:
        from .hf_export import hf_module

        self.module = _OnnxGraph(hf_module(model)).eval()
        self.model = model
        self.config = model.config

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        inputs = model_inputs(self.model, [w[: int(n)].cpu().numpy() for w, n in zip(waveforms, lengths)])
        with torch.no_grad():
            hidden, _ = self.module(*(torch.from_numpy(v) for v in inputs.values()))
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


def per_figures(model: SpeechEncoder, files: dict[str, Path], probe_data: Any, *, seed: int = 0) -> dict[str, Any]:
    """PER of a phone probe trained on PyTorch fp32 features (train split), scored on each variant's features
    of the test split; probe training is deterministic given `seed`, so every variant meets the same probe."""
    from .evaluation.features import FeatureSet, extract_features
    from .evaluation.run import run_probes

    sr = model.config.sample_rate
    reference = extract_features(TorchHiddenStates(model), probe_data.catalog, name="pytorch-fp32", sample_rate=sr)
    out: dict[str, Any] = {"pytorch_fp32": run_probes(reference, probe_data, seed=seed)["pr"]["per"]}
    test_ids = {item.id for item in probe_data.test}
    test_items = [item for item in probe_data.catalog.items if item.id in test_ids]
    for variant, path in files.items():
        feats = extract_features(OnnxRepresentations(path, model), test_items, name=variant, sample_rate=sr)
        mixed = FeatureSet(name=variant, reps={**{k: v for k, v in reference.reps.items() if k not in test_ids},
                                               **feats.reps}, num_reps=reference.num_reps, dim=reference.dim)
        out[variant] = run_probes(mixed, probe_data, seed=seed)["pr"]["per"]
    return out


def export_onnx_variants(model: SpeechEncoder, out_dir: Path, variants: Sequence[str], *,
                         held_out: list[np.ndarray] | None = None,
                         calibration: list[np.ndarray] | None = None, probe_data: Any = None,
                         int8_mode: str = DEFAULT_INT8_MODE, measure_speed: bool = True,
                         seed: int = 0) -> dict[str, Any]:
    """Write the asked variants to `out_dir` (ONNX_FILES names), verify each against PyTorch fp32 and keep
    only those that pass their gate. Returns {"variants": {name: figures}, "gates": ..., ...}; a rejected
    variant has "status": "rejected" and a "reason", and its file is removed."""
    import tempfile

    chosen = parse_onnx_variants(variants)
    model = model.cpu().eval()
    sr = model.config.sample_rate
    rng = np.random.default_rng(seed)
    if not held_out:  # no audio given: noise, the least a check can use (stated in the report)
        held_out = [rng.standard_normal(int(s * sr)).astype(np.float32) * 0.1 for s in (3.1, 1.7, 2.4)]
    batches = check_batches(model, held_out)
    torch_graph = TorchHiddenStates(model).module
    with torch.no_grad():
        reference = [torch_graph(*(torch.from_numpy(v) for v in b.values()))[0].numpy() for b in batches]
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"gates": {v: ONNX_GATES[v] for v in chosen}, "check_utterances": len(held_out),
                              "check_batches": [list(b["input_values"].shape) for b in batches],
                              "int8_mode": int8_mode, "opset": OPSET, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        report["fp32_check"] = export_onnx(model, fp32)
        files: dict[str, Path] = {}
        for variant in chosen:
            target = out_dir / ONNX_FILES[variant]
            if variant == "fp32":
                shutil.copyfile(fp32, target)
            elif variant == "fp16":
                convert_fp16(fp32, target)
            else:
                calib = [model_inputs(model, [w]) for w in (calibration or held_out)]
                quantize_int8(fp32, target, int8_mode, calib)
            files[variant] = target
    for variant, target in files.items():
        session = onnx_session(target)
        got = [session.run(None, b)[0] for b in batches]
        layers = compare_outputs(model, batches, reference, got)
        figures: dict[str, Any] = {
            "file": target.name, "size_bytes": target.stat().st_size, "layers": layers,
            "min_cka": min(x["cka"] for x in layers), "min_cosine": min(x["cosine"] for x in layers)}
        if variant == "int8":
            figures["int8_mode"] = int8_mode
        if measure_speed and default_runs() > 0:
            figures["rtf_cpu_1_thread"] = onnx_rtf(target, sr, threads=1)
            figures["rtf_cpu_all_threads"] = onnx_rtf(target, sr, threads=0)
        elif measure_speed:
            figures["timing"] = f"skipped ({RUNS_ENV}=0)"
        report["variants"][variant] = figures
    if probe_data is not None:
        pers = per_figures(model, files, probe_data, seed=seed)
        report["per_pytorch_fp32"] = pers["pytorch_fp32"]
        for variant in files:
            report["variants"][variant]["per"] = pers[variant]
    for variant, target in files.items():
        figures = report["variants"][variant]
        gate = ONNX_GATES[variant]
        reasons = []
        if not figures["min_cka"] >= gate["min_cka"]:
            worst = min(range(len(figures["layers"])), key=lambda i: figures["layers"][i]["cka"])
            reasons.append(f"hidden state {worst} has linear CKA {figures['min_cka']:.4f} with PyTorch fp32 "
                           f"(gate {gate['min_cka']})")
        if "per" in figures and figures["per"] - report["per_pytorch_fp32"] > gate["max_per_increase"]:
            reasons.append(f"probe PER {figures['per']:.4f} vs {report['per_pytorch_fp32']:.4f} with fp32 "
                           f"features (gate +{gate['max_per_increase']})")
        figures["status"] = "rejected" if reasons else "ok"
        if reasons:
            figures["reason"] = "; ".join(reasons)
            target.unlink(missing_ok=True)
    return report


def held_out_audio(catalog: Any, sample_rate: int, *, seed: int = 0, max_items: int = 8,
                   max_seconds: float = 10.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(held-out check waveforms, int8 calibration waveforms) from a job's audio: the check utterances come
    from the `test` split when the data has one (never trained on), else from a seeded subset; calibration
    utterances are drawn from the rest. Each is cut to `max_seconds`."""
    from .audio import load_waveform

    items = list(catalog.items)
    test = [item for item in items if item.split == "test"]
    pool = replace(catalog, items=test) if test else catalog
    check = pool.subset(max_items=max_items, seed=seed).items
    check_ids = {item.id for item in check}
    rest = replace(catalog, items=[item for item in items if item.id not in check_ids and item.split != "test"])
    calib = rest.subset(max_items=2 * max_items, seed=seed + 1).items if rest.items else []
    limit = int(max_seconds * sample_rate)

    def load(chosen: list[Any]) -> list[np.ndarray]:
        return [load_waveform(item, sample_rate)[:limit].astype(np.float32) for item in chosen]

    return load(check), load(calib)


def export_for_users(model: SpeechEncoder, export_dir: Path, hf_dir: Path | None, variants: Sequence[str], *,
                     audio: Path | None = None, seed: int = 0, int8_mode: str = DEFAULT_INT8_MODE,
                     metadata: dict[str, Any] | None = None, measure_per: bool = True) -> dict[str, Any]:
    """The ways out besides our own format: the Hugging Face export in `hf_dir` (when given) and the verified
    ONNX variants in `export_dir` (copied into `hf_dir/onnx/` under the same Hub names). `audio`: a directory
    of audio for the checks (held-out utterances, int8 calibration, and the PER probe when it has phone
    labels); without it the checks run on noise. Returns the report's "hf" and "onnx" entries."""
    from .audio import scan_audio
    from .errors import AudioError
    from .hf_export import is_hf_export_dir, save_hf_export

    out: dict[str, Any] = {}
    if hf_dir is not None:
        if hf_dir.exists() and any(hf_dir.iterdir()):
            if not is_hf_export_dir(hf_dir):  # never delete a directory we did not write
                raise CheckpointError(f"{hf_dir.name} exists and is not a Hugging Face export of skillkd: "
                                      "choose a new or empty output directory")
            shutil.rmtree(hf_dir)
        save_hf_export(model, hf_dir, metadata=metadata)
        out["hf"] = {"path": str(hf_dir), "files": sorted(p.name for p in hf_dir.iterdir())}
    chosen = parse_onnx_variants(variants)
    if not chosen:
        return out
    held: list[np.ndarray] = []
    calib: list[np.ndarray] = []
    probe_data = None
    notes = []
    if audio is not None:
        held, calib = held_out_audio(scan_audio(audio), model.config.sample_rate, seed=seed)
        if measure_per:
            from .evaluation.dataset import load_probe_data

            try:
                probe_data = load_probe_data(audio, tasks=("pr",))
            except AudioError as exc:
                notes.append(f"no PER check: {exc.message}")
    else:
        notes.append("no audio given: checked on noise; no PER check")
    report = export_onnx_variants(model, export_dir, chosen, held_out=held, calibration=calib,
                                  probe_data=probe_data, int8_mode=int8_mode, seed=seed)
    report["notes"] = notes
    report["max_abs_diff"] = report["fp32_check"]["max_abs_diff"]
    report["files"] = {}
    for variant, figures in report["variants"].items():
        if figures["status"] != "ok":
            continue
        path = export_dir / ONNX_FILES[variant]
        report["files"][variant] = str(path)
        if hf_dir is not None:
            (hf_dir / "onnx").mkdir(exist_ok=True)
            shutil.copyfile(path, hf_dir / "onnx" / ONNX_FILES[variant])
    out["onnx"] = report
    return out

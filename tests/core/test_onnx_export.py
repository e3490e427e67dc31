"""ONNX variants: the graph's inputs and outputs (padding, dynamic axes), verification before export, the
gates, the spec field and the export CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from core.evaluation import speed
from core.export import onnx as export_module
from core.export.for_users import export_for_users
from core.export.hf import hf_module
from core.export.onnx import ONNX_FILES, model_inputs, onnx_session, parse_onnx_variants
from core.export.student import save_student
from core.models import load_huggingface
from core.spec import CompressionSpec
from tests.utils.models import pruned_student, save_tiny_teacher


def _pruned(tmp_path: Path, arch: str = "wavlm", large: bool = True, seed: int = 0):
    # 50 frames per second of audio, as in real teachers (the default tiny config runs at 800, and the checks'
    # seconds of noise would then spend most of this file's time in attention over thousands of frames)
    teacher = save_tiny_teacher(
        tmp_path / f"t-{arch}", arch, large, conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8)
    )
    return pruned_student(load_huggingface(teacher), seed)


def _exported(tmp_path: Path, utterances: int):
    """A pruned hubert student, its fp32 ONNX file and `utterances` calibration inputs of seeded noise."""
    student = _pruned(tmp_path, "hubert", False)
    fp32 = tmp_path / "model.onnx"
    export_module.export_onnx(student, fp32)
    rng = np.random.default_rng(0)
    calib = [
        model_inputs(student, [0.1 * rng.standard_normal(4000).astype(np.float32)]) for _ in range(utterances)
    ]
    return student, fp32, calib


@pytest.mark.parametrize(("arch", "large"), [("wavlm", True), ("hubert", False)])
def test_variants_are_written_verified_and_match_pytorch_with_padding(
    tmp_path: Path, arch: str, large: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed = (
        arch == "hubert"
    )  # one case measures the speed (one pass of a short utterance: the tiny config runs
    if timed:  # at 800 frames/s, so 10 s of attention takes seconds); the other skips it, as the suite does
        monkeypatch.setenv(speed.RUNS_ENV, "1")
        monkeypatch.setattr(speed, "SECONDS", 0.5)
    student = _pruned(tmp_path, arch, large)
    info = export_for_users(student, tmp_path / "student", tmp_path / "hf", ["int8", "fp16", "fp32"])
    report = info["onnx"]
    assert list(report["variants"]) == ["fp32", "fp16", "int8"]
    for variant, figures in report["variants"].items():
        assert figures["status"] == "ok", figures
        assert figures["min_cka"] >= export_module.ONNX_GATES[variant]["min_cka"]
        assert len(figures["layers"]) == student.num_layers + 1
        assert figures["size_bytes"] > 0
        if timed:
            assert figures["rtf_cpu_1_thread"] > 0 and figures["rtf_cpu_all_threads"] > 0
            assert figures["speedup_vs_onnx_fp32_1_thread"] > 0  # against the fp32 file, run in turn
        else:
            assert "rtf_cpu_1_thread" not in figures and figures["timing"] == f"skipped ({speed.RUNS_ENV}=0)"
        assert (tmp_path / "student" / ONNX_FILES[variant]).exists()
        assert (tmp_path / "hf" / "onnx" / ONNX_FILES[variant]).exists()
    assert report["check_batches"][-1][0] == 2  # the padded batch of two lengths
    # fp32: a padded batch of three, a length never traced, against transformers' module
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (5100, 3300, 4000)]
    inputs = model_inputs(student, waves)
    session = onnx_session(tmp_path / "student" / "model.onnx", threads=1)
    assert [i.name for i in session.get_inputs()] == ["input_values", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["hidden_states", "last_hidden_state"]
    hidden, last = session.run(None, inputs)
    with torch.no_grad():
        ref = hf_module(student)(
            torch.from_numpy(inputs["input_values"]),
            attention_mask=torch.from_numpy(inputs["attention_mask"]),
            output_hidden_states=True,
        )
    assert hidden.shape[:2] == (student.num_layers + 1, 3)
    assert np.abs(hidden - torch.stack(ref.hidden_states).numpy()).max() < 1e-4
    assert np.abs(last - ref.last_hidden_state.numpy()).max() < 1e-4


def test_a_variant_below_its_gate_is_not_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = _pruned(tmp_path, "hubert", False)
    gates = {**export_module.ONNX_GATES, "int8": {"min_cka": 1.01, "max_per_increase": 0.03}}
    monkeypatch.setattr(export_module, "ONNX_GATES", gates)
    info = export_for_users(student, tmp_path / "student", tmp_path / "hf", ["fp32", "int8"])
    int8 = info["onnx"]["variants"]["int8"]
    assert int8["status"] == "rejected" and "CKA" in int8["reason"] and "gate 1.01" in int8["reason"]
    assert not (tmp_path / "student" / "model_quantized.onnx").exists()
    assert not (tmp_path / "hf" / "onnx" / "model_quantized.onnx").exists()
    assert set(info["onnx"]["files"]) == {"fp32"}


def test_static_int8_and_per_on_labelled_audio(tmp_path: Path) -> None:
    from tests.utils.evaluation import write_dataset

    dataset = write_dataset(tmp_path / "data", speakers=2, per_speaker={"train": 4, "test": 2})
    student = _pruned(tmp_path, "hubert", False)
    info = export_for_users(student, tmp_path / "student", None, ["int8"], audio=dataset, int8_mode="static")
    report = info["onnx"]
    assert "hf" not in info and report["int8_mode"] == "static"
    assert report["check_utterances"] == 4  # the test split
    int8 = report["variants"]["int8"]
    # a fraction; above 1 is possible (a probe trained on 8 tiny utterances inserts many phones)
    assert report["per_pytorch_fp32"] >= 0.0 and int8["per"] >= 0.0
    assert int8["status"] == "ok" or "PER" in int8.get("reason", "")


def test_static_conv_int8_quantises_the_conv_front_end_but_its_first_conv(tmp_path: Path) -> None:
    """Issue 25: `static_conv` int8 is QDQ over every Conv (the front end, the positional conv) but the first,
    on the raw waveform, and every MatMul: uint8 activations, int8 weights per output channel, calibrated; its
    hidden states stay close to fp32's."""
    import onnx

    student, fp32, calib = _exported(tmp_path, 4)
    int8 = tmp_path / "int8.onnx"
    export_module.quantize_int8(fp32, int8, "static_conv", calib)
    graph = onnx.load(str(int8)).graph
    made_by = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == len(student.config.conv) + 1  # the feature extractor's and the positional conv

    def quantised(node, input_index: int) -> bool:
        source = made_by.get(node.input[input_index])
        return source is not None and source.op_type == "DequantizeLinear"

    assert not quantised(convs[0], 0) and not quantised(convs[0], 1)  # the first conv: fp32 in, fp32 weights
    for conv in convs[1:]:
        assert quantised(conv, 0) and quantised(conv, 1), conv.name
        weight_dq = made_by[conv.input[1]]
        scales = next(i for i in graph.initializer if i.name == weight_dq.input[1])
        assert scales.dims == [conv_out_channels(graph, conv)]  # one scale per output channel
    activations = [
        i
        for i in graph.initializer
        if i.name.endswith("_zero_point") and i.data_type == onnx.TensorProto.UINT8
    ]
    assert activations  # uint8 activations (the fast u8 x s8 kernels on x86)
    assert any(n.op_type == "MatMul" and quantised(n, 1) for n in graph.node)
    inputs = model_inputs(student, [0.1 * np.random.default_rng(1).standard_normal(6000).astype(np.float32)])
    ref = onnx_session(fp32).run(["last_hidden_state"], inputs)[0][0]
    got = onnx_session(int8).run(["last_hidden_state"], inputs)[0][0]
    cosine = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cosine.mean() > 0.95, cosine.mean()


def conv_out_channels(graph, conv) -> int:
    import onnx.numpy_helper

    for init in graph.initializer:  # the fp32 weight the DequantizeLinear reads, or its int8 copy
        if init.name.startswith(conv.input[1].removesuffix("_DequantizeLinear_Output")):
            return int(onnx.numpy_helper.to_array(init).shape[0])
    raise AssertionError(f"no weight for {conv.name}")


def test_spec_and_variant_lists() -> None:
    assert CompressionSpec(export_onnx=True).export_onnx == ["fp32"]
    assert CompressionSpec(export_onnx=False).export_onnx == []
    assert CompressionSpec(export_onnx="int8, FP16").export_onnx == ["fp16", "int8"]
    assert CompressionSpec().export_onnx == []
    with pytest.raises(ValueError, match="export_onnx"):
        CompressionSpec(export_onnx=["fp8"])
    assert parse_onnx_variants("fp32,int8") == ["fp32", "int8"]
    with pytest.raises(ValueError, match="fp8"):
        parse_onnx_variants("fp8")


def test_export_cli_onnx_list_and_hf(tmp_path: Path) -> None:
    from cli import skillkd as cli

    student_dir = save_student(_pruned(tmp_path), tmp_path / "student")
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(student_dir), "--onnx", "fp8"])
    assert res.exit_code == 2 and "fp8" in res.output
    res = runner.invoke(
        cli, ["export", str(student_dir), "--onnx", "fp16", "--out", str(tmp_path / "o"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert Path(json.loads(res.stdout)["onnx"]["files"]["fp16"]).exists()
    res = runner.invoke(
        cli, ["export", str(student_dir), "--format", "hf", "--onnx", "--out", str(tmp_path / "hf")]
    )
    assert res.exit_code == 0, res.output
    assert "fp32" in res.output and "ok" in res.output
    assert sorted(p.name for p in (tmp_path / "hf" / "onnx").iterdir()) == ["model.onnx"]
    assert not (tmp_path / "hf" / "onnx.tmp").exists()


def test_export_hf_carries_the_variants_the_run_verified(tmp_path: Path) -> None:
    """`export --format hf` without --onnx copies the ONNX files a run verified next to its student (its
    report.json says which passed their gate), and only those."""
    from cli import skillkd as cli

    student_dir = save_student(_pruned(tmp_path), tmp_path / "student")
    (student_dir / "model.onnx").write_bytes(b"fp32 graph")
    (student_dir / "model_quantized.onnx").write_bytes(b"int8 graph")
    report = {
        "onnx": {
            "variants": {
                "fp32": {"status": "ok"},
                "int8": {"status": "failed", "reason": "below its gate"},
                "fp16": {"status": "ok"},  # reported ok but its file is gone: not carried
            }
        }
    }
    (student_dir / "report.json").write_text(json.dumps(report))
    res = CliRunner().invoke(
        cli, ["export", str(student_dir), "--format", "hf", "--out", str(tmp_path / "hf"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "hf" / "onnx").iterdir()) == ["model.onnx"]
    assert (tmp_path / "hf" / "onnx" / "model.onnx").read_bytes() == b"fp32 graph"
    assert json.loads(res.stdout)["carried_onnx"] == {"fp32": str(tmp_path / "hf" / "onnx" / "model.onnx")}


def test_static_conv_files_are_tuned_for_onnxruntime_without_changing_their_arithmetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A static_conv file has every GELU as one Gelu node (onnxruntime leaves the Div/Erf pattern unfused
    after a DequantizeLinear) and no inferred shapes (with them onnxruntime fuses SkipLayerNormalization, slow
    on one CPU thread): checked on onnxruntime's own optimised graph; the outputs match the untuned file's."""
    import onnx
    import onnxruntime as ort

    student, fp32, calib = _exported(tmp_path, 2)
    export_module.quantize_int8(fp32, tmp_path / "tuned.onnx", "static_conv", calib)
    monkeypatch.setattr(export_module, "tune_static_conv", lambda path: {})
    export_module.quantize_int8(fp32, tmp_path / "untuned.onnx", "static_conv", calib)

    def optimised(name: str) -> list[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / f"{name}.opt.onnx")).graph.node]

    tuned, untuned = optimised("tuned"), optimised("untuned")
    gelus = len(student.config.conv) + 1 + student.config.num_layers  # conv layers, positional conv, FFNs
    assert "Erf" in untuned and "SkipLayerNormalization" in untuned  # what the tuning is for
    assert "Erf" not in tuned and "SkipLayerNormalization" not in tuned
    assert tuned.count("Gelu") + tuned.count("BiasGelu") == gelus
    written = onnx.load(str(tmp_path / "tuned.onnx")).graph
    assert not written.value_info
    # named after their modules, as the exporter names nodes (profiles attribute time by name)
    assert {n.name for n in written.node if n.op_type == "Gelu"} >= {
        f"/hf_model/feature_extractor/conv_layers.{i}/Gelu" for i in range(1, len(student.config.conv))
    }
    feeds = model_inputs(student, [0.1 * np.random.default_rng(1).standard_normal(6000).astype(np.float32)])
    got = onnx_session(tmp_path / "tuned.onnx").run(None, feeds)
    want = onnx_session(tmp_path / "untuned.onnx").run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        # the same arithmetic up to erf's rounding, which can move a value across a uint8 step
        np.testing.assert_allclose(g, w, atol=0.05 * float(np.abs(w).max()))


def test_static_conv_calibrates_each_range_as_the_mean_of_the_utterances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """static_conv's activation ranges are the mean of each calibration utterance's min / max (onnxruntime's
    moving-average MinMax: one loud utterance no longer sets a whole tensor's step); static keeps the global
    range. The quantiser is asked so; what it does with it is onnxruntime's."""
    import onnxruntime.quantization as ort_quant

    asked: dict[str, dict] = {}
    real = ort_quant.quantize_static

    def spy(*args, **kwargs):
        asked[kwargs["activation_type"].name] = kwargs.get("extra_options") or {}
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quant, "quantize_static", spy)
    _, fp32, calib = _exported(tmp_path, 2)
    export_module.quantize_int8(fp32, tmp_path / "conv.onnx", "static_conv", calib)
    export_module.quantize_int8(fp32, tmp_path / "static.onnx", "static", calib)
    assert asked["QUInt8"] == {"CalibMovingAverage": True}  # static_conv
    assert asked["QInt8"] == {}  # static

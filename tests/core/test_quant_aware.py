"""int8-aware final distillation (issue 25): the fake quantisation against onnxruntime's own quantiser, the
hooks' reach and removal, and a run whose stage 2 trains int8-aware and exports static_conv int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.distill.quant_aware import fake_quantize, int8_aware, quantised_modules, scale_zero_point
from core.export.onnx import DEFAULT_INT8_MODE, int8_mode_for, student_int8_mode
from core.models import load_model, make_student
from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.models import save_tiny_teacher
from tests.utils.pipeline import SPEC


@pytest.mark.parametrize("lo, hi", [(-0.17, 24.9), (0.3, 2.0), (-3.0, -0.5), (-1.0, 1.0), (0.0, 0.0)])
def test_scale_and_zero_point_are_onnxruntimes(lo: float, hi: float) -> None:
    """The same scale and zero point as onnxruntime's calibrator computes for a uint8 tensor of that range."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    zero_point, scale = compute_scale_zp(
        np.float32(lo), np.float32(hi), np.array(0, np.uint8), np.array(255, np.uint8), symmetric=False
    )
    got_scale, got_zp = scale_zero_point(lo, hi)
    assert int(got_zp) == int(zero_point)
    assert float(got_scale) == pytest.approx(float(scale), rel=1e-6)


def test_fake_quantisation_matches_onnxruntimes_quantize_dequantize() -> None:
    """fake_quantize(x) equals onnxruntime running QuantizeLinear -> DequantizeLinear (uint8) on x, values at
    the rounding ties and beyond the range (saturation) included."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    scale_t, zero_point_t = scale_zero_point(-0.17, 24.9)
    scale, zero_point = float(scale_t), int(zero_point_t)
    rng = np.random.default_rng(0)
    ties = (np.arange(-30, 300) + 0.5 - zero_point) * scale  # exact half steps: round half to even
    x = np.concatenate([rng.standard_normal(4000) * 6, ties, [-5.0, 40.0, 0.0]]).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("z", TensorProto.UINT8, [], [zero_point]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    got = fake_quantize(torch.from_numpy(x), scale, zero_point).numpy()
    # the same integer step everywhere: at most float32 rounding of x / scale apart
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert np.mean(np.isclose(got, expected, rtol=0, atol=1e-6)) > 0.999


def test_the_gradient_passes_inside_the_range_and_stops_where_it_saturates() -> None:
    scale, zero_point = scale_zero_point(-1.0, 1.0)
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.99, 1.5], requires_grad=True)
    fake_quantize(x, scale, zero_point).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_hooks_quantise_every_conv_but_the_first_and_every_linear_then_leave(tmp_path: Path) -> None:
    teacher = load_model(save_tiny_teacher(tmp_path / "t", "hubert"))
    student = make_student(teacher)
    modules = quantised_modules(student)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv1d)]
    assert convs[0] not in modules and all(c in modules for c in convs[1:])  # the positional conv too
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m in modules for m in linears)
    keys = sorted(student.state_dict())
    x, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    student.eval()
    with torch.no_grad():
        plain = student(x, lengths)[0][-1]
        with int8_aware(student) as summary:
            student.train()
            student(x, lengths)  # calibrates the ranges
            student.eval()
            quantised = student(x, lengths)[0][-1]
        after = student(x, lengths)[0][-1]
    assert summary["fake_quantised_tensors"] == 2 * len(modules)
    assert not torch.equal(plain, quantised)  # the rounding is in the forward pass
    assert (plain - quantised).abs().max() < 0.5 * plain.abs().max()  # ... and only rounding
    assert torch.equal(plain, after)  # gone after the block
    assert sorted(student.state_dict()) == keys  # nothing persisted in the model


def test_the_spec_refuses_int8_aware_without_stage_2() -> None:
    with pytest.raises(ValidationError, match="int8_aware"):
        CompressionSpec(int8_aware=True, stage2_steps=0)
    with pytest.raises(ValidationError, match="int8_aware_consistency: .* needs int8_aware"):
        CompressionSpec(int8_aware_consistency=0.5)
    with pytest.raises(ValidationError, match="int8_aware_consistency"):
        CompressionSpec(int8_aware=True, int8_aware_consistency=-0.1)
    assert CompressionSpec().int8_consistency == 0.0
    assert CompressionSpec(int8_aware=True).int8_consistency == 0.2  # the measured default
    assert CompressionSpec(int8_aware=True, int8_aware_consistency=0).int8_consistency == 0.0
    assert int8_mode_for(CompressionSpec(int8_aware=True).model_dump()) == "static_conv"
    assert int8_mode_for(CompressionSpec().model_dump()) == DEFAULT_INT8_MODE
    on_int8 = CompressionSpec(target_speedup=2.0, speed_target="onnx-int8").model_dump()
    assert int8_mode_for(on_int8) == "static_conv"


def test_an_int8_aware_stage_2_runs_twice_the_presets_steps_unless_the_spec_says() -> None:
    """Its warmup and checkpoints scale with it, as an explicit --stage2-steps scales them; stage 1 and plain
    runs keep the preset's schedule; --stage2-steps wins."""
    from core.spec import INT8_AWARE_STAGE2_FACTOR, PRESETS

    assert INT8_AWARE_STAGE2_FACTOR == 2
    for preset in PRESETS:
        plain, aware = CompressionSpec(preset=preset), CompressionSpec(preset=preset, int8_aware=True)
        base = PRESETS[preset][2]["steps"]
        assert plain.recipe(2).steps == base
        assert aware.recipe(2).steps == 2 * base
        assert aware.recipe(2) == CompressionSpec(preset=preset, stage2_steps=2 * base).recipe(2)
        assert aware.recipe(1) == plain.recipe(1)
    # the quick recipe the 1920-step int8-aware students were trained with
    quick = CompressionSpec(int8_aware=True).recipe(2)
    assert (quick.steps, quick.warmup_steps, quick.checkpoint_every) == (1920, 192, 25)
    assert CompressionSpec(int8_aware=True, stage2_steps=100).recipe(2).steps == 100


def test_an_int8_aware_run_trains_through_the_rounding_and_exports_static_conv(tmp_path: Path) -> None:
    teacher_dir = save_tiny_teacher(tmp_path / "teacher", "hubert")
    audio = write_audio(tmp_path / "audio")
    result = run(
        CompressionSpec(**{**SPEC, "int8_aware": True, "export_onnx": ["int8"]}),
        teacher_dir,
        audio,
        tmp_path / "w",
    )
    report = result.report
    assert report["spec"]["int8_aware"] is True
    summary = report["stage2"]["int8_aware"]
    # the front end's convs but the first, and the positional conv
    assert summary["convs"] == len(report["student"]["conv_channels"]) and summary["linears"] > 0
    assert summary["consistency"] == 0.2  # on by default
    assert report["onnx"]["int8_mode"] == "static_conv"
    assert report["onnx"]["variants"]["int8"]["int8_mode"] == "static_conv"
    assert student_int8_mode(result.export_dir) == "static_conv"
    assert load_model(result.export_dir).num_params() == report["student"]["num_params"]


def test_in_training_each_tensor_is_rounded_at_the_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quant noise: in a training pass each hooked tensor is rounded with probability RATE (0: never, the
    plain forward; 1: always), drawn from the hooks' own random streams (dropout's stays as without them)."""
    import core.distill.quant_aware as quant_aware

    teacher = load_model(save_tiny_teacher(tmp_path / "t", "hubert"))
    student = make_student(teacher).eval()
    student.prune()  # a fixed student, as in stage 2: no mask noise in a training pass
    x, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])

    def forward() -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout in every pass
        return student(x, lengths)[0][-1]

    with torch.no_grad():
        student.train()
        plain = forward()
        outs = {}
        for rate in ("0", "1"):
            monkeypatch.setenv(quant_aware.RATE_ENV, rate)
            with int8_aware(student) as summary:
                outs[rate] = forward()
            assert summary["rate"] == float(rate)
    assert torch.equal(outs["0"], plain)
    assert not torch.equal(outs["1"], plain)


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_the_consistency_term_pulls_the_rounded_student_to_its_fp32_self(
    tmp_path: Path, weight: float
) -> None:
    """Each stage-2 step also runs the student fully rounded and fully fp32; the term is logged and said in
    the stage's summary. Weight 0 turns it off: nothing logged, nothing said."""
    import json

    teacher_dir = save_tiny_teacher(tmp_path / "teacher", "hubert")
    result = run(
        CompressionSpec(**{**SPEC, "int8_aware": True, "int8_aware_consistency": weight}),
        teacher_dir,
        write_audio(tmp_path / "a"),
        tmp_path / "w",
    )
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    if not weight:
        assert "consistency" not in result.report["stage2"]["int8_aware"]
        assert not any("int8_consistency" in row for row in log)
        return
    assert result.report["stage2"]["int8_aware"]["consistency"] == 1.0
    stage2 = [row for row in log if row["stage"] == "final_distill"]
    assert stage2 and all(-1.0 <= row["int8_consistency"] < 1.0 for row in stage2)  # L1 - cos, near -1
    assert not any("int8_consistency" in row for row in log if row["stage"] == "distill_prune")


def test_the_cli_refuses_a_consistency_weight_without_int8_aware_and_its_dry_run_says_the_term(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from cli import skillkd

    teacher, audio = save_tiny_teacher(tmp_path / "t"), write_audio(tmp_path / "a", n=2)
    out = str(tmp_path / "o")
    base = ["compress", str(teacher), str(audio), "--out", out, "--dry-run", "--device", "cpu"]
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware-consistency", "0.5"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "int8_aware_consistency" in result.output and "needs int8_aware" in result.output
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "consistency term (rounded student to its fp32 self): weight 0.2" in result.output
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware", "--int8-aware-consistency", "0"])
    assert "consistency term (rounded student to its fp32 self): off" in result.output, result.output
    assert not (tmp_path / "o").exists()

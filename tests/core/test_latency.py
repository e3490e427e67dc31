"""The latency budget (issue 25): the cost model's prediction against the counts it is built from, its
gradient, the NNLS fit on a fake clock, the cache, the spec's fields, landing on a latency target, and a run
end to end that reports the predicted and measured speed-ups. No assertion on real timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import core.calibrate.latency as fitting
import core.finalize.measured as measured_landing
from core.calibrate.latency import cost_model_for, fit_cost_model, random_shapes
from core.errors import SpecError
from core.finalize.landing import land, measure
from core.models import SpeechEncoder, load_huggingface, make_student
from core.models.latency import INTERCEPT, CostModel, conv_groups, feature_names, feature_vector
from core.pipeline import run
from core.spec import Budget, CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.models import randomise_masks, save_tiny_teacher
from tests.utils.pipeline import SPEC

ARCHS = [("hubert", False), ("wav2vec2", True), ("wavlm", False), ("wavlm", True)]


def synthetic_model(teacher: SpeechEncoder, seconds: float = 10.0) -> CostModel:
    """A cost model with known, distinct coefficients: each feature costs the teacher a different share."""
    groups = conv_groups(teacher)
    names = feature_names(groups)
    values = feature_vector(teacher, seconds, groups)
    shares = np.linspace(1.0, 2.0, len(names))
    coefficients = {n: float(s * 1e-3 / v) for n, s, v in zip(names, shares, values) if v > 0}
    return CostModel("cpu", 1, seconds, groups, coefficients)


def fake_timer(model: CostModel) -> Any:
    calls: list[int] = []

    def timer(models: list[SpeechEncoder]) -> list[float]:
        calls.append(len(models))
        return [model.predict_seconds(m) for m in models]

    timer.calls = calls  # type: ignore[attr-defined]
    return timer


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(fitting.CACHE_ENV, str(cache))
    return cache


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_open_masks_predict_the_teachers_latency(tmp_path: Path, arch: str, large: bool) -> None:
    """Masks fully open (training mode): the student's expected latency is the teacher's, which is the sum of
    coefficient x feature over the teacher's counts."""
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    model = synthetic_model(teacher)
    names = feature_names(model.groups)
    by_hand = sum(
        model.coefficients.get(n, 0.0) * v for n, v in zip(names, feature_vector(teacher, 10.0, model.groups))
    )
    assert float(model.predict(teacher)) == pytest.approx(by_hand, rel=1e-6)
    student = make_student(teacher, layers=True)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.fill_(100.0)
    student.train()
    assert model.predict(student).item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_eval_latency_is_the_pruned_students(tmp_path: Path, arch: str, large: bool) -> None:
    """In eval mode the prediction is the model's on the architecture `prune()` produces."""
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    model = synthetic_model(teacher)
    student = make_student(teacher, layers=True)
    randomise_masks(student)
    student.eval()
    predicted = measure(student, 10.0, model)["latency"]
    student.prune()
    assert model.predict_seconds(student) == pytest.approx(predicted, rel=1e-6)
    assert predicted < model.predict_seconds(teacher)


def test_expected_latency_is_differentiable_in_every_mask(tiny_teacher_dir: Path) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    model = synthetic_model(teacher)
    student = make_student(teacher)
    model.predict(student).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.mask_parameters())


def test_nnls_recovers_known_coefficients_from_a_fake_clock(tiny_teacher_dir: Path) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    truth = synthetic_model(teacher)
    timer = fake_timer(truth)
    fitted, record = fit_cost_model(teacher, seconds=10.0, shapes=12, timer=timer)
    assert timer.calls == [13]  # the teacher and 12 shapes, timed together (interleaved)
    for name, value in truth.coefficients.items():
        assert fitted.coefficients[name] == pytest.approx(value, rel=1e-4), name
    assert record["max_abs_relative_error"] < 1e-6
    assert len(record["shapes"]) == 13 and record["shapes"][0]["model"] == "teacher"


def test_random_shapes_are_seeded_pruned_copies(tiny_teacher_dir: Path) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    a = [m.config.unit_counts() for m in random_shapes(teacher, 3, seed=1)]
    b = [m.config.unit_counts() for m in random_shapes(teacher, 3, seed=1)]
    assert a == b and len({str(x) for x in a}) == 3
    assert all(not m.config.has_masks for m in random_shapes(teacher, 1, seed=2))
    # the default fit's shapes (12, seed 0) lose whole attention and FFN blocks, some shapes most of them, as
    # trained students do (a fit that never saw a layer without attention put the fixed costs on its MACs);
    # conv layers always keep a channel
    shapes = [m.config.unit_counts() for m in random_shapes(teacher, fitting.SHAPES, seed=0)]
    no_heads = [sum(layer["heads"] == 0 for layer in c["layers"]) for c in shapes]
    no_ffn = [sum(layer["ffn"] == 0 for layer in c["layers"]) for c in shapes]
    layers = len(shapes[0]["layers"])
    assert sum(n > 0 for n in no_heads) >= 4 and max(no_heads) >= layers // 2, no_heads
    assert sum(n > 0 for n in no_ffn) >= 4 and min(no_heads) == 0, (no_ffn, no_heads)
    assert all(min(c["conv_channels"]) >= 1 for c in shapes)


def test_the_cache_is_hit_the_second_time(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    timer = fake_timer(synthetic_model(teacher))
    first = cost_model_for(teacher, target="cpu", threads=1, seconds=10.0, out=tmp_path / "a", timer=timer)
    second = cost_model_for(teacher, target="cpu", threads=1, seconds=10.0, out=tmp_path / "b", timer=timer)
    assert not first["from_cache"] and second["from_cache"] and len(timer.calls) == 1
    assert first["cost_model"] == second["cost_model"]
    assert (tmp_path / "b" / fitting.COST_MODEL_FILE).exists()
    # another thread count is another key
    third = cost_model_for(teacher, target="cpu", threads=2, seconds=10.0, out=None, timer=timer)
    assert not third["from_cache"] and len(timer.calls) == 2


def test_int8_fits_made_before_the_files_tuning_are_not_reused(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The onnx-int8 key names the int8 file's version (its tuning for onnxruntime changed its speed); the
    other targets' keys, hence their cached fits, are as before."""
    teacher = load_huggingface(tiny_teacher_dir)
    int8 = fitting.cache_key(teacher, "onnx-int8", 1, 10.0)
    assert int8["int8_file"] == fitting.INT8_FILE_VERSIONS["onnx-int8"]
    assert all("int8_file" not in fitting.cache_key(teacher, t, 1, 10.0) for t in ("cpu", "onnx-fp32"))
    monkeypatch.setitem(fitting.INT8_FILE_VERSIONS, "onnx-int8", int8["int8_file"] - 1)
    assert fitting.key_digest(fitting.cache_key(teacher, "onnx-int8", 1, 10.0)) != fitting.key_digest(int8)


def test_spec_fields() -> None:
    spec = CompressionSpec(target_speedup=2.0)
    assert spec.latency_sparsity == pytest.approx(0.5)
    assert spec.target_sparsity(1000) is None  # a latency target alone: no parameter budget
    assert spec.budgets(1000, 1e9) == []  # the latency budget waits for the cost model
    assert spec.budgets(1000, 1e9, 0.4) == [Budget("latency", 0.4, pytest.approx(0.5))]
    both = CompressionSpec(target_speedup=4.0, sparsity=0.5).budgets(1000, 1e9, 0.4)
    assert [b.kind for b in both] == ["params", "latency"]
    for bad, field in [
        ({"target_speedup": 1.0}, "target_speedup"),
        ({"target_speedup": 0.5}, "target_speedup"),
        ({"target_speedup": 2.0, "target_macs": "1G"}, "target_speedup"),
        ({"target_speedup": 2.0, "macs_sparsity": 0.5}, "target_speedup"),
        ({"speed_target": "tpu"}, "speed_target"),
        ({"speed_threads": 0}, "speed_threads"),
    ]:
        with pytest.raises(ValidationError, match=field):
            CompressionSpec(**bad)
    assert CompressionSpec(target_speedup=2.0, speed_target="cuda").speed_target == "cuda"
    assert CompressionSpec(target_speedup=2.0, speed_target="onnx-int8").speed_target == "onnx-int8"


def _fine_teacher(tmp_path: Path) -> Path:
    """Fine-grained units (as tests/core/test_budgets.py's) so 0.5% of a target is more than one unit."""
    return save_tiny_teacher(
        tmp_path / "fine",
        "hubert",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=32,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
    )


@pytest.mark.parametrize("kinds", [("latency",), ("params", "latency")])
def test_landing_hits_a_latency_target(tmp_path: Path, kinds: tuple[str, ...]) -> None:
    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    student = make_student(teacher)
    randomise_masks(student, scale=2.0)
    student.eval()
    start = measure(student, 10.0, model)
    teacher_sizes = {"params": float(teacher.num_params()), "latency": model.predict_seconds(teacher)}
    wanted = {"params": 0.9 * start["params"], "latency": 1.06 * start["latency"]}
    budgets = [Budget(k, teacher_sizes[k], 1 - wanted[k] / teacher_sizes[k]) for k in kinds]
    record = land(student, budgets, seconds=10.0, cost_model=model)
    assert record["landed"], record
    student.prune()
    achieved = {"params": student.num_params(), "latency": model.predict_seconds(student)}
    for budget in budgets:
        assert abs(achieved[budget.kind] / budget.target - 1) <= 0.005, (budget, achieved)
        assert record["targets"][budget.kind]["after"] == pytest.approx(achieved[budget.kind], rel=1e-6)
    with pytest.raises(ValueError, match="cost model"):
        land(student, budgets)


def test_a_run_with_target_speedup_reports_predicted_and_measured_speedups(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on a tiny teacher, the clock faked for the fit (a synthetic cost model: the test must not
    depend on this machine's timings) and one real interleaved pass for the report's measured speed-up."""
    teacher = load_huggingface(tiny_teacher_dir)
    timer = fake_timer(synthetic_model(teacher))
    monkeypatch.setattr(fitting, "cpu_timer", lambda seconds, threads, rounds: timer)
    monkeypatch.setattr(measured_landing, "other_load", _quiet)  # the fake clock is not disturbed by load
    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "1")
    monkeypatch.setenv(fitting.SHAPES_ENV, "10")
    audio = write_audio(tmp_path / "audio")
    spec = CompressionSpec(**SPEC, target_speedup=1.5)
    report = run(spec, tiny_teacher_dir, audio, tmp_path / "w").report
    latency = report["latency"]
    assert latency["target_speedup"] == 1.5 and latency["target"] == "cpu" and latency["threads"] == 1
    assert latency["predicted_speedup"] == pytest.approx(
        latency["teacher_predicted_s"] / latency["student_predicted_s"]
    )
    # landed on the cost model, then on the clock (here the fit's own fake one): at least 1.5x measured
    measured = report["finalize"]["landing"]["measured"]
    assert measured["reached_target"] and measured["measured_speedup"] >= 1.5 * 0.995, measured
    assert measured["predicted_speedup"] == pytest.approx(latency["predicted_speedup"])
    assert latency["landing"] == measured
    assert 1.5 * 0.98 < latency["predicted_speedup"] < 1.5 * 1.3 * 1.02
    assert latency["measured_speedup"] == pytest.approx(report["speed"]["cpu_1_thread"]["speedup"])
    assert latency["cost_model"]["from_cache"] is False and len(latency["cost_model"]["shapes"]) == 11
    assert "params" not in report["targets"] and "latency" in report["targets"]
    assert report["finalize"]["landing"]["landed"]
    assert (tmp_path / "w" / "calibrate" / fitting.COST_MODEL_FILE).exists()
    # a second run of the same teacher on the same target reads the fit from the cache
    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "0")
    assert timer.calls == [11, 1 + len(measured["candidates"])]  # the fit, then teacher + candidates
    calls = len(timer.calls)
    again = run(spec, tiny_teacher_dir, audio, tmp_path / "w2").report["latency"]
    assert again["cost_model"]["from_cache"] is True and len(timer.calls) == calls
    assert again["landing"] == "skipped (SKILLKD_SPEED_RUNS=0)"
    assert again["measured_speedup"] is None


def test_a_speedup_beyond_the_smallest_student_is_a_spec_error(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    model = synthetic_model(teacher)  # its intercept alone is a tenth of the teacher's time or so
    monkeypatch.setattr(fitting, "cpu_timer", lambda seconds, threads, rounds: fake_timer(model))
    spec = CompressionSpec(**SPEC, target_speedup=500.0)
    with pytest.raises(SpecError, match="target_speedup") as info:
        run(spec, tiny_teacher_dir, write_audio(tmp_path / "audio"), tmp_path / "w")
    assert info.value.field == "target_speedup"


def test_the_dry_run_says_the_latency_budget(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.estimate import estimate, render

    teacher = load_huggingface(tiny_teacher_dir)
    monkeypatch.setattr(
        fitting, "cpu_timer", lambda seconds, threads, rounds: fake_timer(synthetic_model(teacher))
    )
    spec = CompressionSpec(**SPEC, target_speedup=1.5)
    result = estimate(spec, tiny_teacher_dir, write_audio(tmp_path / "audio"), timed_steps=1)
    latency = result["latency"]
    assert latency["target_s"] == pytest.approx(latency["teacher_predicted_s"] / 1.5)
    assert [b["kind"] for b in result["targets"]] == ["latency"]
    assert result["student_estimate"]["uniform"]["predicted_latency_s"] <= latency["target_s"] * (1 + 1e-6)
    text = render(result)
    assert "latency:  1.5x faster than the teacher on cpu (1 thread)" in text and "cached" in text
    assert "targets:  latency alone (below)" in text
    assert "--int8-aware" not in text
    assert (
        "finalize keeps the least pruned student timed at 1.58x or more on the clock (speed_margin 5%)"
        in text
    )
    result["latency"]["margin"] = 0.0
    assert "timed at 1.5x or more on the clock\n" in render(result)

    import core.estimate as estimating

    timers = {"onnx-int8": lambda seconds, threads, rounds: fake_timer(synthetic_model(teacher))}
    monkeypatch.setattr(estimating, "LATENCY_TIMERS", timers)
    for aware in (False, True):
        spec = CompressionSpec(**SPEC, target_speedup=1.5, speed_target="onnx-int8", int8_aware=aware)
        text = render(estimate(spec, tiny_teacher_dir, write_audio(tmp_path / "audio"), timed_steps=1))
        assert "faster than the teacher on onnx-int8" in text
        assert ("without --int8-aware the student's int8 file may miss the int8 gate" in text) is not aware


def test_the_onnx_target_fits_on_onnxruntime_timings_and_measures_the_student_there(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """speed_target onnx-fp32: the fit times each shape's fp32 ONNX file in onnxruntime (real timings, a few
    shapes: only their count and sign are asserted), and the report measures teacher and student there too."""
    from core.export.onnx import LATENCY_TIMERS, onnx_timer

    teacher = load_huggingface(tiny_teacher_dir)
    with pytest.raises(ValueError, match="without its timer"):
        fit_cost_model(teacher, target="onnx-fp32", shapes=2, rounds=1)
    assert LATENCY_TIMERS["onnx-fp32"] is onnx_timer

    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "2")
    monkeypatch.setenv(fitting.SHAPES_ENV, "3")
    monkeypatch.setenv(fitting.ROUNDS_ENV, "1")
    monkeypatch.setattr(fitting, "cpu_timer", None)  # nothing may time this target in PyTorch
    # finalize's landing times its candidates in onnxruntime too: two here (each session of this tiny teacher
    # over 10 s holds GBs of attention; seven candidates and the teacher at once took the machine's 24 GiB)
    monkeypatch.setattr(measured_landing, "CANDIDATES", (1.0, 1.1))
    # a 2 s reference utterance: this tiny teacher's attention over 10 s (7,999 frames) holds GBs in each
    # onnxruntime session and its timings swing with the machine's memory state
    spec = CompressionSpec(**SPEC, target_speedup=1.2, speed_target="onnx-fp32", macs_reference_seconds=2.0)
    report = run(spec, tiny_teacher_dir, write_audio(tmp_path / "audio"), tmp_path / "w").report
    latency = report["latency"]
    assert latency["target"] == "onnx-fp32" and latency["cost_model"]["target"] == "onnx-fp32"
    shapes = latency["cost_model"]["shapes"]
    assert len(shapes) == 4 and all(np.isfinite(r["measured_s"]) and r["measured_s"] > 0 for r in shapes)
    assert latency["measured_speedup"] > 0 and latency["measured"].startswith("onnx-fp32")


def test_the_cuda_target_fits_lands_and_measures_on_the_gpu(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """speed_target cuda on a machine without a GPU: the GPU (its name) and its timer are faked, so this
    checks that every timing of the run goes to the cuda timer (the fit, finalize's landing, the report)
    and that the cache key names the GPU; tests/test_gpu_speed.py times a real one."""
    from core import timing

    teacher = load_huggingface(tiny_teacher_dir)
    timer = fake_timer(synthetic_model(teacher))
    asked: list[tuple[float, int, int]] = []

    def cuda_timer(seconds: float, threads: int, rounds: int) -> Any:
        asked.append((seconds, threads, rounds))
        return timer

    monkeypatch.setattr(timing, "gpu_name", lambda: "Fake GPU 80GB")
    monkeypatch.setattr(fitting, "cuda_timer", cuda_timer)
    monkeypatch.setattr(fitting, "cpu_timer", None)  # nothing may time this target on the CPU
    monkeypatch.setattr(measured_landing, "other_load", _quiet)
    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "1")
    monkeypatch.setenv(fitting.SHAPES_ENV, "10")
    spec = CompressionSpec(**SPEC, target_speedup=1.5, speed_target="cuda")
    report = run(spec, tiny_teacher_dir, write_audio(tmp_path / "audio"), tmp_path / "w").report
    latency = report["latency"]
    assert latency["target"] == "cuda" and latency["cost_model"]["target"] == "cuda"
    landing = latency["landing"]
    assert landing["reached_target"] and landing["margin"] == spec.speed_margin == 0.05, landing
    assert landing["measured_speedup"] >= 1.5 * 1.05 * 0.995, landing  # the spec's margin reached finalize
    # the fit (teacher + 10 shapes), finalize's landing (teacher + candidates), the report (teacher, student)
    assert timer.calls == [11, 1 + len(landing["candidates"]), 2]
    assert [threads for _, threads, _ in asked] == [1, 1, 1]
    assert latency["measured"] == "cuda: median of 1 passes, teacher and student in turn"
    assert latency["measured_speedup"] == pytest.approx(
        latency["teacher_predicted_s"] / latency["student_predicted_s"], rel=1e-3
    )  # the fake clock is a cost model, the fit recovers it
    document = json.loads((tmp_path / "w" / "calibrate" / fitting.COST_MODEL_FILE).read_text())
    assert document["key"]["target"] == "cuda" and document["key"]["gpu"] == "Fake GPU 80GB"
    assert fitting.cache_key(teacher, "cpu", 1, 10.0).get("gpu") is None  # a CPU fit's key is as before


def test_a_job_on_cuda_n_makes_its_gpu_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """What times or names "the" GPU (the cuda target's timer, gpu_name in the cost model's key) reads the
    current CUDA device: a job on cuda:N holds N current while it runs; on cpu or plain cuda nothing changes
    (the GPU's context manager is faked: this machine may have none)."""
    import torch

    from core.pipeline import current_gpu

    entered: list[int] = []

    class FakeDevice:
        def __init__(self, device: torch.device) -> None:
            self.index = device.index

        def __enter__(self) -> None:
            entered.append(self.index)

        def __exit__(self, *exc: object) -> None:
            entered.append(-1)

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    for name in ("cpu", "cuda"):
        with current_gpu(torch.device(name)):
            assert entered == []
    with current_gpu(torch.device("cuda:1")):
        assert entered == [1]
    assert entered == [1, -1]


def test_the_cuda_target_on_a_machine_without_a_gpu_is_a_spec_error(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cli import skillkd
    from core import timing

    monkeypatch.setattr(timing, "gpu_name", lambda: None)
    audio = write_audio(tmp_path / "audio")
    spec = CompressionSpec(**SPEC, target_speedup=2.0, speed_target="cuda")
    with pytest.raises(SpecError, match="CUDA GPU") as info:
        run(spec, tiny_teacher_dir, audio, tmp_path / "w")
    assert info.value.field == "speed_target" and info.value.code == "spec_invalid"
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        fitting.cuda_timer(1.0, 1, 1)
    args = ["compress", str(tiny_teacher_dir), str(audio), "--target-speedup", "2", "--speed-target", "cuda"]
    for extra in (["--dry-run"], ["--out", str(tmp_path / "cli")]):
        result = CliRunner().invoke(skillkd, args + extra)
        assert result.exit_code != 0
        assert "error [spec_invalid]" in result.output and "CUDA GPU" in result.output, result.output
        assert "Traceback" not in result.output


def test_the_int8_target_times_the_static_conv_files(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """speed_target onnx-int8: each model is exported, quantised as an int8-aware student's export is
    (static_conv, calibrated on the timing input) and the int8 file is what is timed (onnxruntime runs a
    quantised file's QDQ graph: its Conv and MatMul weights are int8)."""
    import onnx

    import core.export.onnx as onnx_export

    assert onnx_export.LATENCY_TIMERS["onnx-int8"] is onnx_export.onnx_int8_timer
    teacher = load_huggingface(tiny_teacher_dir)
    (student,) = random_shapes(teacher, 1, seed=0)
    timed: list[str] = []
    quantised: list[tuple[str, int]] = []
    real_quantize, real_speedups = onnx_export.quantize_int8, onnx_export.onnx_speedups_in_fresh_process

    def quantize(src: Path, dst: Path, mode: str = "dynamic", calibration: Any = None) -> None:
        quantised.append((mode, len(calibration or [])))
        real_quantize(src, dst, mode, calibration)
        graph = onnx.load(str(dst)).graph
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}

    def speedups(paths: dict[str, Path], sr: int, **kw: Any) -> dict[str, float]:
        timed.extend(p.name for p in paths.values())
        return real_speedups(paths, sr, **kw)

    monkeypatch.setattr(onnx_export, "quantize_int8", quantize)
    monkeypatch.setattr(onnx_export, "onnx_speedups_in_fresh_process", speedups)
    seconds = onnx_export.onnx_int8_timer(1.0, 1, 1)([teacher, student])
    assert quantised == [("static_conv", 1), ("static_conv", 1)]
    assert timed == ["m0.int8.onnx", "m1.int8.onnx"]
    assert len(seconds) == 2 and all(np.isfinite(t) and t > 0 for t in seconds)
    timed.clear()
    onnx_export.onnx_timer(1.0, 1, 1)([teacher])
    assert timed == ["m0.onnx"]


def _skewed(model: CostModel, factor: float) -> CostModel:
    """`model` with its fixed cost (the intercept) `factor` times as high: a clock on which every student's
    speed-up differs from the model's (lower above 1, higher below)."""
    coefficients = {
        name: value * factor if name == INTERCEPT else value for name, value in model.coefficients.items()
    }
    return CostModel(model.target, model.threads, model.seconds, model.groups, coefficients)


@contextmanager
def _quiet() -> Iterator[dict[str, float | None]]:
    yield {"other_cores": 0.0}  # no other process on the machine: the timings judge the landing


def _landed_student(teacher: SpeechEncoder, model: CostModel, speedup: float) -> tuple[Any, list[Budget]]:
    student = make_student(teacher)
    randomise_masks(student, scale=2.0)
    student.eval()
    teacher_s = model.predict_seconds(teacher)
    budgets = [Budget("latency", teacher_s, 1 - 1 / speedup)]
    assert land(student, budgets, seconds=10.0, cost_model=model)["landed"]
    return student, budgets


@pytest.mark.parametrize("skew", [3.0, 0.0])
def test_measured_landing_keeps_the_least_pruned_candidate_the_clock_finds_fast_enough(
    tmp_path: Path, skew: float
) -> None:
    """The cost model lands 1.5x; the clock (the model with `skew` times its fixed cost) reads that student
    too slow (3) or too fast (0). All candidates are timed in one session (the teacher and seven students);
    the kept one is the least pruned that the clock reads at 1.5x or more, and its masks are the ones
    left."""
    from core.finalize.measured import CANDIDATES, land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    truth = _skewed(model, skew)
    clock = fake_timer(truth)
    student, budgets = _landed_student(teacher, model, 1.5)
    first = clock([teacher, _pruned_copy(student)])
    assert not 1.5 <= first[0] / first[1] <= 1.5 * 1.04  # the cost model's landing misses on the clock
    record = land_measured(student, teacher, budgets, model, 1.5, clock, seconds=10.0, load=_quiet)
    assert clock.calls[1:] == [1 + len(CANDIDATES)], clock.calls
    rows = record["candidates"]
    assert [r["factor"] for r in rows] == sorted(CANDIDATES)
    predicted = [r["predicted_speedup"] for r in rows]
    assert predicted == sorted(predicted) and predicted[2] == pytest.approx(1.5, rel=0.006)
    kept = record["kept"]
    assert rows[kept]["measured_speedup"] >= 1.5 * 0.995 and record["reached_target"], rows
    assert all(r["measured_speedup"] < 1.5 * 0.995 for r in rows[:kept])  # none less pruned was fast enough
    assert (kept > 2) if skew > 1 else (kept <= 2)  # pruned further when the clock reads it slow
    pruned = _pruned_copy(student)
    teacher_s, student_s = truth.predict_seconds(teacher), truth.predict_seconds(pruned)
    assert teacher_s / student_s == pytest.approx(
        record["measured_speedup"]
    )  # the masks left are the kept ones
    # each candidate's shape is in the record: the kept one's is the student's; more pruned ones are smaller
    assert rows[kept]["units"] == pruned.config.unit_counts() and rows[kept]["params"] == pruned.num_params()
    params = [r["params"] for r in rows]
    assert params == sorted(params, reverse=True) and len(set(params)) > 1, params
    assert record["predicted_speedup"] == pytest.approx(
        model.predict_seconds(teacher) / measure(student, 10.0, model)["latency"]
    )


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.1])
def test_measured_landing_keeps_a_student_faster_than_asked_by_the_margin(
    tmp_path: Path, margin: float
) -> None:
    """A clock that agrees with the cost model: without a margin the cost model's own landing (1.0x the
    target) is kept; with one, the least pruned candidate that measured the target x (1 + margin): the 1.05x
    one for 5%, the 1.1x one for 10%. `reached_target` judges the target itself."""
    from core.finalize.measured import land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    clock = _scaled_clock(model, 1.0)
    student, budgets = _landed_student(teacher, model, 1.5)
    record = land_measured(
        student, teacher, budgets, model, 1.5, clock, seconds=10.0, margin=margin, load=_quiet
    )
    rows, kept = record["candidates"], record["kept"]
    assert rows[kept]["factor"] == 1.0 + margin and record["margin"] == margin, rows[kept]
    assert record["measured_speedup"] >= 1.5 * (1 + margin) * 0.995 and record["reached_target"]
    assert all(r["measured_speedup"] < 1.5 * (1 + margin) * 0.995 for r in rows[:kept])
    assert ("+" in record["reason"]) == (margin > 0), record["reason"]
    with pytest.raises(ValueError, match="margin"):
        land_measured(student, teacher, budgets, model, 1.5, clock, seconds=10.0, margin=-0.1, load=_quiet)


def _scaled_clock(model: CostModel, factor: float) -> Any:
    """A clock on which every student takes `factor` x the cost model's time and the teacher its own."""
    calls: list[int] = []

    def timer(models: list[SpeechEncoder]) -> list[float]:
        calls.append(len(models))
        return [model.predict_seconds(models[0])] + [model.predict_seconds(m) * factor for m in models[1:]]

    timer.calls = calls  # type: ignore[attr-defined]
    return timer


def test_measured_landing_prunes_less_when_the_clock_reads_every_student_faster(tmp_path: Path) -> None:
    """A clock on which every student runs 12% faster than the cost model says: even the least pruned
    candidate (0.9x the target predicted) measures the target, so a second session times less pruned ones
    around 0.89x (1 / 1.12) and keeps the least pruned of those that measures it."""
    from core.finalize.measured import CANDIDATES, SECOND_SESSION, land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    clock = _scaled_clock(model, 1 / 1.12)
    student, budgets = _landed_student(teacher, model, 1.5)
    record = land_measured(student, teacher, budgets, model, 1.5, clock, seconds=10.0, load=_quiet)
    assert clock.calls == [1 + len(CANDIDATES), 1 + len(SECOND_SESSION)]
    rows, kept = record["candidates"], record["kept"]
    assert rows[0]["factor"] == 0.9 and rows[0]["measured_speedup"] >= 1.5  # the first session's edge
    assert rows[kept]["session"] == 2 and record["reached_target"] and "second session" in record["reason"]
    assert record["predicted_speedup"] < rows[0]["predicted_speedup"]  # less pruned than the 0.9x one
    assert record["predicted_speedup"] == pytest.approx(1.5 / 1.12, rel=0.01)
    assert [s["candidates"] for s in record["sessions"]] == [len(CANDIDATES), len(SECOND_SESSION)]


def test_measured_landing_follows_a_clock_slower_than_every_candidate(tmp_path: Path) -> None:
    """Every student 45% slower on the clock than the cost model says (both fits on this project's host in
    one session read 4x-predicted students at 3.1x): none of the first session's candidates (up to 1.3x the
    target predicted) measures the target; the second session, around 1.45x, lands one that does."""
    from core.finalize.measured import CANDIDATES, SECOND_SESSION, land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    clock = _scaled_clock(model, 1.45)
    student, budgets = _landed_student(teacher, model, 1.5)
    record = land_measured(student, teacher, budgets, model, 1.5, clock, seconds=10.0, load=_quiet)
    assert clock.calls == [1 + len(CANDIDATES), 1 + len(SECOND_SESSION)]
    rows, kept = record["candidates"], record["kept"]
    first = [r for r in rows if r["session"] == 1]
    assert all(r["measured_speedup"] < 1.5 * 0.995 for r in first)
    assert rows[kept]["session"] == 2 and record["reached_target"], rows
    assert record["measured_speedup"] >= 1.5 * 0.995
    assert record["predicted_speedup"] == pytest.approx(1.5 * 1.45, rel=0.08)
    teacher_s, student_s = clock([teacher, _pruned_copy(student)])
    assert teacher_s / student_s == pytest.approx(record["measured_speedup"])  # the kept masks are left


def test_measured_landing_keeps_a_landing_the_clock_agrees_with(tmp_path: Path) -> None:
    from core.finalize.measured import land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    student, budgets = _landed_student(teacher, model, 1.5)
    before = [hc.keep_override.clone() for hc in student.hard_concretes()]
    record = land_measured(
        student, teacher, budgets, model, 1.5, fake_timer(model), seconds=10.0, load=_quiet
    )
    assert record["candidates"][record["kept"]]["factor"] == 1.0 and record["inversions"] == 0
    assert all(torch.equal(a, hc.keep_override) for a, hc in zip(before, student.hard_concretes()))


def test_measured_landing_keeps_the_fastest_when_none_reaches_the_target(tmp_path: Path) -> None:
    """A clock on which every student is slower than the target (1.2x at most): the fastest candidate is
    kept, and the record says the target was not reached."""
    from core.finalize.measured import land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)

    def slow(models: list[SpeechEncoder]) -> list[float]:
        return [1.2] + [1.0 + 0.01 * abs(i - 4) for i in range(len(models) - 1)]  # the 5th is fastest

    student, budgets = _landed_student(teacher, model, 1.5)
    record = land_measured(student, teacher, budgets, model, 1.5, slow, seconds=10.0, load=_quiet)
    # none in the first session, so a second one (five candidates, its last the fastest): none there either
    assert record["kept"] == 7 + 4 and record["candidates"][11]["session"] == 2
    assert not record["reached_target"]
    assert record["reason"] == "no candidate measured 1.5x in two sessions: the fastest of the second"
    assert record["inversions"] > 0
    with pytest.raises(ValueError, match="latency budget"):
        land_measured(student, teacher, [], model, 1.5, slow, seconds=10.0, load=_quiet)
    with pytest.raises(ValueError, match="include 1.0"):
        land_measured(student, teacher, budgets, model, 1.5, slow, seconds=10.0, candidates=(0.9, 1.1))


def test_measured_landing_does_not_follow_a_busy_clock(tmp_path: Path) -> None:
    """Other processes kept a core busy during the timing: it judges nothing, the cost model's landing stands
    and the record says the CPU was busy."""
    from core.finalize.measured import land_measured

    teacher = load_huggingface(_fine_teacher(tmp_path))
    model = synthetic_model(teacher)
    clock = fake_timer(_skewed(model, 3.0))  # would prune further if it were believed

    @contextmanager
    def busy() -> Iterator[dict[str, float | None]]:
        yield {"other_cores": 1.0}

    student, budgets = _landed_student(teacher, model, 1.5)
    first = [hc.keep_override.clone() for hc in student.hard_concretes()]
    record = land_measured(student, teacher, budgets, model, 1.5, clock, seconds=10.0, load=busy)
    assert record["candidates"][record["kept"]]["factor"] == 1.0 and record["other_cores"] == 1.0
    assert record["reason"].startswith("the CPU was busy (other processes kept 1.00 cores busy")
    assert len(record["sessions"]) == 1 and clock.calls[-1] == 8  # a busy clock asks no second session
    assert all(torch.equal(a, hc.keep_override) for a, hc in zip(first, student.hard_concretes()))


def test_other_load_counts_another_process_and_not_this_one() -> None:
    """`core.timing.other_load` on the real /proc/stat: this process spinning is not counted, nor a child it
    starts and waits for in the block (the fresh-process clock); another process spinning on one core for the
    whole block is (about one core; the bound leaves room for a busy machine)."""
    import subprocess
    import sys
    import time

    from core.timing import other_load

    with other_load() as own:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
    spin = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
    with other_load() as child_of_ours:
        subprocess.run([sys.executable, "-c", spin], check=True)
    other_process = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(0.3)\n" + spin])
    try:
        with other_load() as other:
            time.sleep(1.6)  # it spins through the block and is waited for only after
    finally:
        other_process.wait()
    assert None not in (own["other_cores"], child_of_ours["other_cores"], other["other_cores"])
    assert other["other_cores"] - own["other_cores"] > 0.6, (own, other)
    assert child_of_ours["other_cores"] - own["other_cores"] < 0.4, (own, child_of_ours)


def test_the_cpu_clock_times_in_a_fresh_process(tiny_teacher_dir: Path) -> None:
    """`cpu_timer` times the models in a child process (`core.timing.timed_rounds_in_fresh_process`), one
    positive time per model; a child that fails says so in a RuntimeError."""
    from core.calibrate import clock

    teacher = load_huggingface(tiny_teacher_dir)
    shape = random_shapes(teacher, 1, seed=2)[0]
    times = fitting.cpu_timer(1.0, 1, 3)([teacher, shape])
    assert len(times) == 2 and all(t > 0 for t in times)
    with pytest.raises(RuntimeError, match="in a fresh process failed"):
        clock.time_in_fresh_process([teacher], 1.0, 1, 0)  # no timed rounds: the child refuses


def test_the_onnx_clock_times_in_a_fresh_process(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ONNX targets' timer runs the files in a child (`python -m core.export.onnx`): with this process's
    own `onnx_speedups` broken it still returns one positive time per model; a child that cannot read a file
    says so in a RuntimeError, without a traceback."""
    import core.export.onnx as onnx_export

    def broken(*args: Any, **kw: Any) -> dict[str, float]:
        raise AssertionError("timed in the job's own process")

    monkeypatch.setattr(onnx_export, "onnx_speedups", broken)
    teacher = load_huggingface(tiny_teacher_dir)
    times = onnx_export.onnx_timer(1.0, 1, 2)([teacher, random_shapes(teacher, 1, seed=3)[0]])
    assert len(times) == 2 and all(np.isfinite(t) and t > 0 for t in times)
    with pytest.raises(RuntimeError, match="timing the ONNX files in a fresh process failed") as failed:
        onnx_export.onnx_speedups_in_fresh_process({"m0": tiny_teacher_dir / "missing.onnx"}, 16000, runs=1)
    assert "Traceback" not in str(failed.value)


def test_a_fresh_process_that_prints_no_result_is_a_clear_error() -> None:
    from core.timing import json_from_fresh_process

    with pytest.raises(RuntimeError, match="timing the moon in a fresh process failed: it printed no result"):
        # `import this` prints a poem
        json_from_fresh_process("this", [], 1, "timing the moon", passes=1, seconds=1.0)
    with pytest.raises(RuntimeError, match="timing the moon in a fresh process failed: .*No module named"):
        json_from_fresh_process("no_such_module_here", [], 1, "timing the moon", passes=1, seconds=1.0)


def _pruned_copy(student: SpeechEncoder) -> SpeechEncoder:
    import copy

    pruned = copy.deepcopy(student)
    pruned.prune()
    return pruned


def test_the_command_line_says_asked_predicted_and_measured_speedups() -> None:
    from cli.engine import latency_line

    latency = {
        "target": "cpu",
        "threads": 1,
        "target_speedup": 4.0,
        "predicted_speedup": 4.1234,
        "landing_measured_speedup": 4.051,
        "measured_speedup": 3.987,
    }
    assert latency_line(latency) == (
        "latency: 4x asked on cpu (1 thread): 4.12x predicted, 4.05x measured at landing, 3.99x measured "
        "in the report"
    )
    untimed = {**latency, "threads": 4, "landing_measured_speedup": None, "measured_speedup": None}
    assert latency_line(untimed) == "latency: 4x asked on cpu (4 threads): 4.12x predicted"
    on_gpu = {**untimed, "target": "cuda", "threads": 1}
    assert latency_line(on_gpu) == "latency: 4x asked on cuda: 4.12x predicted"

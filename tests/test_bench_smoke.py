"""Smoke test of `python -m bench.distill_step`: the benchmark runs end to end on CPU in a few seconds, and
its analytic FLOP count agrees with the counted multiply-accumulates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import distill_step
from core.estimate import keep_fraction
from core.evaluation import MacCounter
from core.models import build_model, make_student


def _noise_audio(root: Path, count: int, samples: int, test: int = 0) -> None:
    """`count` utterances of seeded noise at 16 kHz with a manifest, the first `test` in the test split."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        sf.write(root / f"u{i}.wav", (0.2 * rng.standard_normal(samples)).astype(np.float32), 16000)
        rows.append(
            json.dumps({"path": f"u{i}.wav", "split": "test" if i < test else "train", "speaker": "s"})
        )
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")


def test_distill_step_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "distill_step.json"
    # one thread: with two on a shared, oversubscribed CPU, OpenMP barrier stalls make a tiny step take
    # seconds instead of milliseconds
    threads = torch.get_num_threads()
    report = distill_step.main(
        [
            "--size",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch-seconds",
            "1",
            "--utterance-seconds",
            "0.5",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--profile",
            "--json",
            str(out),
        ]
    )
    assert torch.get_num_threads() == threads  # restored
    saved = json.loads(out.read_text())
    assert saved["cases"] == json.loads(json.dumps(report["cases"]))
    cases = {(c["arch"], c["stage"]): c for c in saved["cases"]}
    assert set(cases) == {(a, s) for a in ("hubert", "wavlm") for s in ("stage1", "stage2")}
    for case in cases.values():
        assert "error" not in case, case.get("error")
        assert case["batch"] == 2 and case["samples"] == 8000
        for key in ("step_time_s", "audio_s_per_s", "flops_per_step", "tflops"):
            assert case[key] > 0, key
        assert case["peak_memory_bytes"] >= 0
        assert case["peak_fraction"] is None  # no bf16 peak on CPU
        profile = case["profile"]
        assert list(profile["regions"]) == [
            "teacher_forward",
            "student_forward",
            "loss",
            "backward",
            "optimizer",
        ]
        assert all(r["host_ms"] > 0 for r in profile["regions"].values())
        assert profile["top_ops"] and all(op["self_ms"] >= 0 for op in profile["top_ops"])
    for arch in ("hubert", "wavlm"):
        s1, s2 = cases[(arch, "stage1")], cases[(arch, "stage2")]
        assert s2["student_params"] < s1["student_params"] == s1["teacher_params"]
        assert 0.5 < s2["student_sparsity"] < 0.95
        assert s2["flops_per_step"] < s1["flops_per_step"]
    assert {e["arch"] for e in saved["estimates"]} == {"hubert", "wavlm"}
    assert all(e["paper_recipe_device_hours"] > 0 for e in saved["estimates"])
    assert saved["ratios"] == []  # the transformers baseline runs on CUDA only by default


@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_analytic_macs_match_counted_macs(arch: str) -> None:
    cfg = distill_step.model_config("tiny", arch)
    torch.manual_seed(0)
    teacher = build_model(cfg).eval()
    waveforms = torch.randn(2, 4000)
    with MacCounter() as counter, torch.no_grad():
        teacher(waveforms, None, max_layer=1)
    assert counter.total == sum(distill_step.forward_macs(teacher, 2, 4000, max_layer=1).values())
    student = make_student(teacher)
    with pytest.raises(ValueError, match="without masks"):  # a masked student's count is its expected size
        distill_step.forward_macs(student, 2, 4000)
    keep_fraction(student, distill_step.STAGE2_KEEP_FRACTION)  # as the bench's stage-2 student
    pruned = student.prune()
    student.eval()
    with MacCounter() as counter, torch.no_grad():
        student(waveforms, None)
    assert counter.total == sum(distill_step.forward_macs(student, 2, 4000).values())
    assert [layer.num_heads for layer in pruned.layers] == [1, 1]


def test_target_cka_script_on_a_tiny_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:

    from bench import target_cka

    _noise_audio(tmp_path, 3, 16000)
    result = target_cka.main([str(tiny_teacher_dir), str(tmp_path), "--clusters", "0;1-2"])
    # DPHuBERT's layers as the engine distils them (core.rules.dphubert_clusters: floored, no duplicates)
    assert result["utterances"] == 3 and result["dphubert_layers"] == [0, 1, 2]
    values = result["target_vs_cluster_mean"]
    assert values["r0 vs mean(r0..r0)"] == pytest.approx(1.0)
    assert 0.0 < values["r1 vs mean(r1..r2)"] <= 1.0 + 1e-9
    assert len(result["adjacent"]) == 2


def test_onnx_int8_bench_on_a_tiny_student_shape(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    """`python -m bench.onnx_int8` (issue 25): every recipe written, checked and timed against the fp32 file
    in turn; a report.json's shape with --teacher gives the teacher cut to that architecture."""

    from bench import onnx_int8
    from core.models import load_model

    _noise_audio(tmp_path, 6, 8000, test=2)
    teacher = load_model(tiny_teacher_dir)
    shape = {
        "conv_channels": [c.out_channels - 1 for c in teacher.config.conv],
        "layers": [{"heads": 1, "ffn": 3} for _ in teacher.config.layers],
    }
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"student": shape}))
    result = onnx_int8.main(
        [
            str(report),
            "--teacher",
            str(tiny_teacher_dir),
            str(tmp_path),
            "--rounds",
            "1",
            "--ablate-convs",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    # every conv but the first (fp32 already) left in fp32 in turn: the feature extractor's others, the
    # positional conv
    ablation = result["conv_ablation"]
    assert len(ablation) == len(teacher.config.conv)
    assert len({r["fp32_conv"] for r in ablation}) == len(ablation)
    assert all(0 < r["min_cka"] <= min(r["cka_last"], 1.0) + 1e-6 for r in ablation)
    rows_out = result["rows"]
    assert list(rows_out) == ["fp32", *onnx_int8.RECIPES]
    assert rows_out["fp32"]["speedup_vs_fp32"] == 1.0 and rows_out["fp32"]["min_cka"] > 0.9999
    assert all(r["ms_per_10s_1_thread"] > 0 and 0 < r["min_cka"] <= 1.0 + 1e-6 for r in rows_out.values())
    assert result["check_utterances"] == 2 and (tmp_path / "r.md").exists()


def test_int8_sensitivity_bench_on_a_tiny_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    """`python -m bench.int8_sensitivity` (issue 25): rounding nothing agrees exactly, every group of tensors
    is scored, each conv but the first has its own row; clipping the conv outputs' ranges at -C is recorded
    in them."""

    from bench import int8_sensitivity
    from core.distill.quant_aware import quantised_modules
    from core.export.onnx import TorchHiddenStates
    from core.models import load_model

    _noise_audio(tmp_path, 6, 8000, test=2)
    teacher = load_model(tiny_teacher_dir)
    graph = TorchHiddenStates(teacher).module
    ranges = int8_sensitivity.calibrate(graph, quantised_modules(graph), [])
    assert ranges == {}  # nothing run, nothing seen
    result = int8_sensitivity.main(
        [str(tiny_teacher_dir), str(tmp_path), "--clip-pre-gelu", "0.5", "--out", str(tmp_path / "r")]
    )
    groups = {r["group"]: r for r in result["groups"]}
    assert set(groups) == {
        "every quantised tensor",
        "conv inputs and outputs",
        "conv inputs",
        "conv outputs (before GELU)",
        "Linear inputs and outputs",
    }
    assert all(0 < r["min_cka"] <= r["cka_last"] + 1e-6 and r["min_cka"] < 1.0 for r in groups.values())
    every = groups["every quantised tensor"]["tensors"]
    assert (
        every == groups["conv inputs and outputs"]["tensors"] + groups["Linear inputs and outputs"]["tensors"]
    )
    assert len(result["per_conv"]) == len(teacher.config.conv) - 1  # the feature extractor's, but the first
    assert all(r["output range"][0] >= -0.5 for r in result["per_conv"])
    assert (tmp_path / "r" / "sensitivity.md").exists()
    with int8_sensitivity.rounded(quantised_modules(graph), {}, set()):
        pass  # an empty group installs nothing


def test_ddp_throughput_bench_on_a_tiny_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from bench import ddp_throughput

    report = ddp_throughput.main(
        [
            str(tiny_teacher_dir),
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--batch-seconds",
            "1",
            "--utterance-seconds",
            "0.5",
            "--json",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
        ]
    )
    assert [r["case"] for r in report["runs"]] == ["single", "ddp", "flat"]
    assert all(r["audio_s_per_s"] > 0 for r in report["runs"])
    assert report["runs"][1]["audio_s_per_step"] == 2 * report["runs"][0]["audio_s_per_step"] == 2.0
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["ddp_speedup_over_1_process_median"] > 0
    assert "old path" in (tmp_path / "r.md").read_text()


def test_latency_model_bench_on_a_tiny_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    """`python -m bench.latency_model`: the cost model fitted, held-out shapes timed against the teacher and
    predicted by the cost model, MACs and parameters; the outputs' structure only (no timing assertions)."""
    from bench import latency_model

    report = latency_model.main(
        [
            str(tiny_teacher_dir),
            "--shapes",
            "3",
            "--fit-rounds",
            "1",
            "--holdout",
            "2",
            "--rounds",
            "1",
            "--json",
            str(tmp_path / "r.json"),
            "--markdown",
            str(tmp_path / "r.md"),
        ]
    )
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["command"].startswith("python -m bench.latency_model ")
    assert saved["machine"]["torch"] == torch.__version__ and saved["machine"]["cpu"]
    assert len(saved["loadavg_1min_before_after"]) == 2
    [result] = saved["teachers"]
    fit = result["fit"]
    assert fit["fitted_shapes"] == 3 and len(fit["shapes"]) == 4 and fit["seed"] == 0 and fit["rounds"] == 1
    coefficients = fit["cost_model"]["coefficients"]
    assert set(fit["teacher_by_feature_s"]) == set(coefficients)
    assert all(c >= 0 for c in coefficients.values())  # NNLS
    assert sum(fit["teacher_by_part_s"].values()) == pytest.approx(sum(fit["teacher_by_feature_s"].values()))
    validation = result["validation"]
    assert validation["holdout"] == 2 and validation["rounds"] == 1 and validation["held_out_in_fit"] == 0
    rows = validation["rows"]
    assert [r["model"] for r in rows] == ["teacher", "holdout1", "holdout2"]
    assert all(len(r["times_s"]) == 1 and r["measured_s"] > 0 for r in rows)
    teacher = rows[0]
    assert teacher["measured_speedup"] == 1.0
    assert teacher["predicted_speedup"] == pytest.approx(dict.fromkeys(latency_model.PREDICTORS, 1.0))
    for row in rows[1:]:
        assert set(row["predicted_speedup"]) == set(row["relative_error"]) == set(latency_model.PREDICTORS)
        assert all(v > 0 for v in row["predicted_speedup"].values())
        assert row["predicted_speedup"]["params"] > 1.0 and row["predicted_speedup"]["macs"] > 1.0
        for predictor, error in row["relative_error"].items():
            predicted = row["predicted_speedup"][predictor]
            assert error == pytest.approx(predicted / row["measured_speedup"] - 1.0)
    summary = validation["summary"]
    for predictor in latency_model.PREDICTORS:
        s = summary[predictor]
        assert 0 <= s["mean_abs_relative_error"] <= s["max_abs_relative_error"]
        assert s["spearman"] is None or -1.0 <= s["spearman"] <= 1.0
    markdown = (tmp_path / "r.md").read_text()
    assert "| cost model |" in markdown and "| MACs |" in markdown and "holdout2" in markdown
    assert "attention.macs" in markdown and "conv front end" in markdown


def test_inference_profile_bench_on_a_tiny_teacher(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    """`python -m bench.inference_profile`: a report's student shape rebuilt from the teacher, both profiled
    in PyTorch and onnxruntime fp32/int8; the regions split each pass's time (within the profilers' own
    overhead) and the int8 file runs quantised kernels."""
    from bench import inference_profile
    from core.calibrate.latency import random_shapes
    from core.models import load_model

    teacher = load_model(tiny_teacher_dir)
    (shape,) = random_shapes(teacher, 1, seed=3)
    architecture = {
        "layers": [{"heads": x.num_heads, "ffn": x.ffn_dim} for x in shape.config.layers],
        "conv_channels": [c.out_channels for c in shape.config.conv],
    }
    report_json = tmp_path / "report.json"
    report_json.write_text(json.dumps({"student": architecture}))
    out = tmp_path / "profile.json"
    report = inference_profile.main(
        [str(tiny_teacher_dir), "--student-report", str(report_json), "--seconds", "0.5", "--rounds", "2"]
        + ["--json", str(out), "--markdown", str(tmp_path / "profile.md")]
    )
    rebuilt = inference_profile.shaped_student(teacher, architecture)
    assert rebuilt.config.unit_counts() == shape.config.unit_counts()
    assert json.loads(out.read_text())["models"].keys() == {"teacher", "student"}
    for model in report["models"].values():
        for runtime in ("torch", "onnx-fp32", "onnx-int8"):
            r = model[runtime]
            assert r["total_ms"] > 0 and set(r["regions_ms"]) <= set(inference_profile.REGIONS)
            assert sum(r["regions_ms"].values()) == pytest.approx(r["total_ms"], rel=0.5)
        assert any(op.startswith("aten::") for op in model["torch"]["ops_ms"])
        assert "QLinearConv" in model["onnx-int8"]["ops_ms"] or "ConvInteger" in model["onnx-int8"]["ops_ms"]
    assert "## onnx-int8" in (tmp_path / "profile.md").read_text()
    assert inference_profile.region_of("/encoder/layers.3/attention/MatMul") == "attention"
    assert inference_profile.region_of("encoder.pos_conv") == "positional conv"


def test_positional_conv_variants_equal_the_grouped_conv(tmp_path: Path) -> None:
    """`python -m bench.positional_conv`: overlap-save by FFT and by DFT matmuls, in PyTorch and exported to
    onnxruntime, compute the positional conv's output (odd and even frame counts, shorter and longer than a
    block)."""
    from bench import positional_conv

    report = positional_conv.main(["--channels", "32", "--frames", "7", "200", "--rounds", "1"])
    assert "models" not in report  # whole models only when asked for
    assert [(r["channels"], r["frames"]) for r in report["rows"]] == [(32, 7), (32, 200)]
    for row in report["rows"]:
        assert set(row["max_abs_diff"]) == {
            "torch conv",
            "torch fft-ols",
            "torch dft-ols",
            "onnxruntime conv",
            "onnxruntime dft-ols",
        }
        assert max(row["max_abs_diff"].values()) < 1e-4, row["max_abs_diff"]
        assert all(ms > 0 for ms in row["ms"].values())


def test_positional_conv_bench_times_whole_models_both_ways(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    import core.models.components as components
    from bench import positional_conv
    from core.models import load_model

    (tmp_path / "report.json").write_text(
        json.dumps({"student": {"layers": [{"heads": 1, "ffn": 8}] * 2, "conv_channels": [8, 8, 8]}})
    )
    teacher = load_model(tiny_teacher_dir)
    assert len(teacher.config.layers) == 2 and len(teacher.config.conv) == 3
    gate = components.spectral_ok
    report = positional_conv.main(
        ["--channels", "32", "--frames", "20", "--rounds", "1", "--seconds", "0.5"]
        + ["--teacher", str(tiny_teacher_dir), "--student-report", str(tmp_path / "report.json")]
    )
    assert components.spectral_ok is gate  # restored
    models = report["models"]
    assert set(models["ms"]) == {"teacher fft", "teacher conv", "student fft", "student conv"}
    assert all(v > 0 for v in models["speedup_fft_vs_conv"].values())

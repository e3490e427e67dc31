"""Smoke test of bench/distill_step.py: the benchmark runs end to end on CPU in a few seconds, and its
analytic FLOP count agrees with the counted multiply-accumulates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import distill_step
from core.evaluation import MacCounter
from core.models import build_model, make_student


def test_distill_step_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "distill_step.json"
    # one thread: with two on a shared, oversubscribed CPU, OpenMP barrier stalls make a tiny step take
    # seconds instead of milliseconds
    threads = torch.get_num_threads()
    report = distill_step.main(["--size", "tiny", "--steps", "1", "--warmup", "0", "--batch-seconds", "1",
                                "--utterance-seconds", "0.5", "--device", "cpu", "--threads", "1",
                                "--profile", "--json", str(out)])
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
        assert list(profile["regions"]) == ["teacher_forward", "student_forward", "loss", "backward", "optimizer"]
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
    assert counter.total == sum(distill_step.forward_macs(cfg, 2, 4000, max_layer=1).values())
    student = make_student(teacher)
    distill_step.randomise_masks(student, 0.25, torch.Generator().manual_seed(0))
    pruned = student.prune()
    student.eval()
    with MacCounter() as counter, torch.no_grad():
        student(waveforms, None)
    assert counter.total == sum(distill_step.forward_macs(pruned, 2, 4000).values())
    assert [layer.num_heads for layer in pruned.layers] == [1, 1]

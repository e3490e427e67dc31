"""CUDA check of core.evaluation.speed (run by bench/gpu_check.sh with `-m gpu`): the report's GPU speed
measurement.

Skipped where CUDA is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.evaluation import speed
from tests.utils.models import tiny_pair

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)


@pytest.mark.gpu
def test_measure_on_cuda_adds_a_gpu_setting_and_leaves_the_models_where_they_were(tmp_path: Path) -> None:
    teacher, student = tiny_pair(tmp_path / "t")
    teacher.cuda()
    result = speed.measure(teacher, student, device="cuda", seconds=2.0, runs=3)
    cuda = result["cuda"]
    assert cuda["teacher_rtf"] > 0 and cuda["student_rtf"] > 0 and len(cuda["times_s"]["student"]) == 3
    assert cuda["device"] == torch.cuda.get_device_name(0)
    assert "speedup_cuda" in speed.headline(result)
    assert next(teacher.parameters()).is_cuda and not next(student.parameters()).is_cuda


@pytest.mark.gpu
def test_the_cuda_targets_cost_model_is_fitted_on_gpu_timings(tmp_path: Path) -> None:
    """speed_target cuda: the fit times the teacher and its pruned shapes on the GPU (real timings: only
    their count, sign and the key's GPU are asserted) and leaves the models on the CPU."""
    from core.calibrate.latency import cache_key, fit_cost_model

    teacher, _ = tiny_pair(tmp_path / "t")
    model, record = fit_cost_model(teacher, target="cuda", seconds=2.0, shapes=4, rounds=2)
    assert model.target == "cuda" and len(record["shapes"]) == 5
    assert all(row["measured_s"] > 0 for row in record["shapes"])
    assert cache_key(teacher, "cuda", 1, 2.0)["gpu"] == torch.cuda.get_device_name()
    assert not next(teacher.parameters()).is_cuda


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_job_on_the_second_gpu_names_and_times_that_one(tmp_path: Path) -> None:
    from core.calibrate.latency import cache_key, cuda_timer
    from core.pipeline import current_gpu

    teacher, _ = tiny_pair(tmp_path / "t")
    with current_gpu(torch.device("cuda:1")):
        assert cache_key(teacher, "cuda", 1, 2.0)["gpu"] == torch.cuda.get_device_name(1)
        torch.cuda.reset_peak_memory_stats(1)
        [seconds] = cuda_timer(2.0, 1, 2)([teacher])
    assert seconds > 0 and torch.cuda.max_memory_allocated(1) > 0  # the passes ran on the second GPU

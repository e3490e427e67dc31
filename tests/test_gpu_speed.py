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

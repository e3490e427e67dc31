"""The size constraint works: a short quick-preset run on a tiny teacher lands on the requested size."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.pipeline import run
from core.spec import CompressionSpec
from tests.conftest import save_tiny_teacher
from tests.core.test_pipeline import _write_audio


@pytest.mark.slow
@pytest.mark.parametrize("target", [{"sparsity": 0.75}, {"target_params": 60_000}])
def test_achieved_size_is_within_two_percent_of_the_target(tmp_path: Path, target: dict) -> None:
    # 32 heads of width 2: one head is ~0.9% of the target size. Finalisation keeps round(expected) whole
    # heads per layer, so units must be this fine for 2% to measure the constraint rather than the rounding
    # (with 4 heads of width 16, one head is 10% of the target).
    teacher = save_tiny_teacher(tmp_path / "t", "hubert", hidden_size=64, intermediate_size=128,
                                num_hidden_layers=4, num_attention_heads=32, conv_dim=(32, 32, 32))
    audio = _write_audio(tmp_path / "audio", n=12)
    spec = CompressionSpec(stage1_steps=200, stage2_steps=0, batch_seconds=2.0, **target)
    report = run(spec, teacher, audio, tmp_path / "w").report
    teacher_params = report["teacher"]["num_params"]
    wanted = teacher_params * (1 - report["target_sparsity"])
    expected = report["finalize"]["expected_params_before"]  # the differentiable count the Lagrangian drove
    achieved = report["student"]["num_params"]  # after physical pruning
    assert abs(achieved - wanted) <= 0.02 * wanted, (achieved, expected, wanted)
    assert abs(expected - wanted) <= 0.03 * wanted, (achieved, expected, wanted)

"""The size constraints work: a short quick-preset run on a tiny teacher steers the masks to the requested
size (params, MACs per audio second, or both), and exact landing puts the pruned student within 0.5% of each
target."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.evaluation.facts import count_macs
from core.models import load_student
from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.models import save_tiny_teacher


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [{"sparsity": 0.75}, {"macs_sparsity": 0.6}, {"sparsity": 0.7, "macs_sparsity": 0.6}],
    ids=["params", "macs", "both"],
)
def test_achieved_size_lands_within_half_a_percent_of_every_target(tmp_path: Path, target: dict) -> None:
    # 32 heads of width 2 and a 32-wide conv stack with 80-sample frames: one unit of any kind is well under
    # 0.5% of a target, so landing measures the constraint rather than the granularity of the units.
    teacher = save_tiny_teacher(
        tmp_path / "t",
        "hubert",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=32,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
    )
    audio = write_audio(tmp_path / "audio", n=12)
    spec = CompressionSpec(stage1_steps=150, stage2_steps=0, batch_seconds=2.0, **target)
    result = run(spec, teacher, audio, tmp_path / "w")
    report = result.report
    student = load_student(result.export_dir)
    achieved = {
        "params": student.num_params(),
        "macs": count_macs(student, seconds=spec.macs_reference_seconds).macs_per_second,
    }
    landing = report["finalize"]["landing"]
    assert landing["landed"], landing
    kinds = [k for k in ("params", "macs") if k in report["targets"]]
    assert kinds == (["params"] if "sparsity" in target else []) + (
        ["macs"] if "macs_sparsity" in target else []
    )
    for kind in kinds:
        wanted = report["targets"][kind]["target"]
        assert abs(achieved[kind] / wanted - 1) <= 0.005, (kind, achieved[kind], wanted)
        # stage 1 itself steered the masks towards the target: landing corrected what was left (measured: up
        # to
        # 11% for the params target when two targets share 150 steps, under 3% with one target)
        assert abs(landing["targets"][kind]["before"] / wanted - 1) <= 0.15, landing

"""Compute-aware compression: the differentiable MACs count against the dispatch counter, MACs and params
targets in the spec, the two Lagrangians, and exact landing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.distill.train import DistillStep
from core.evaluation.facts import count_macs
from core.finalize.landing import land, measure
from core.models import load_huggingface, make_student
from core.spec import Budget, CompressionSpec
from tests.utils.models import randomise_masks, save_tiny_teacher

ARCHS = [(a, large) for a in ("wav2vec2", "hubert", "wavlm") for large in (False, True)]


@pytest.mark.parametrize(("arch", "large"), ARCHS)
@pytest.mark.parametrize("seconds", [1.0, 10.0])
def test_expected_macs_equals_the_dispatch_count(
    tmp_path: Path, arch: str, large: bool, seconds: float
) -> None:
    """Masks fully open: the formula equals `count_macs` of the same model (which watches the aten ops)."""
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    counted = count_macs(teacher, seconds=seconds).macs_per_second
    assert float(teacher.expected_macs(seconds)) == pytest.approx(counted, rel=1e-6)
    student = make_student(teacher, layers=True)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.fill_(100.0)
    assert float(student.expected_macs(seconds)) == pytest.approx(counted, rel=1e-6)  # training mode
    parts = teacher.macs_by_part(seconds)
    assert parts["total"] == pytest.approx(counted, rel=1e-6)
    assert len(parts["conv"]) == len(teacher.config.conv) and len(parts["layers"]) == teacher.num_layers


@pytest.mark.parametrize(("arch", "large"), ARCHS)
def test_eval_counts_equal_the_pruned_student(tmp_path: Path, arch: str, large: bool) -> None:
    """In eval mode the counts are exactly what `prune()` keeps: params, and MACs by the dispatch counter."""
    teacher = load_huggingface(save_tiny_teacher(tmp_path / "t", arch, large))
    student = make_student(teacher, layers=True)
    randomise_masks(student)
    student.eval()
    sizes = measure(student, 10.0)
    student.prune()
    assert student.num_params() == sizes["params"]
    assert count_macs(student, seconds=10.0).macs_per_second == pytest.approx(sizes["macs"], rel=1e-6)


def test_expected_macs_is_differentiable_in_every_mask(tiny_teacher_dir: Path) -> None:
    student = make_student(load_huggingface(tiny_teacher_dir))
    student.expected_macs(10.0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.mask_parameters())


def test_spec_targets() -> None:
    assert CompressionSpec(target_macs="2.5G").target_macs == 2_500_000_000
    only_macs = CompressionSpec(macs_sparsity=0.75)
    assert only_macs.target_sparsity(1000) is None
    assert only_macs.budgets(1000, 4e9) == [Budget("macs", 4e9, 0.75)]
    both = CompressionSpec(target_params=250, target_macs="1G")
    assert [(b.kind, round(b.sparsity, 6)) for b in both.budgets(1000, 4e9)] == [
        ("params", 0.75),
        ("macs", 0.75),
    ]
    assert CompressionSpec().budgets(1000, 4e9) == [Budget("params", 1000.0, 0.75)]
    with pytest.raises(ValueError, match="not both"):
        CompressionSpec(target_macs=10, macs_sparsity=0.5)
    with pytest.raises(ValueError, match="not smaller"):
        CompressionSpec(target_macs="5G").budgets(1000, 4e9)
    with pytest.raises(ValueError, match="2.5G"):
        CompressionSpec(target_macs="lots")


def test_each_budget_has_its_own_multipliers(tiny_teacher_dir: Path) -> None:
    """With params and MACs targets the step logs both sparsities and ascends two pairs of multipliers."""
    from core.distill.targets import ClusterTargets
    from core.spec import PRESETS, TrainRecipe

    teacher = load_huggingface(tiny_teacher_dir)
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2]], teacher.config.hidden_size)
    recipe = TrainRecipe(**{**PRESETS["quick"][1], "sparsity_warmup_steps": 0})
    budgets = [
        Budget("params", teacher.num_params(), 0.5),
        Budget("macs", float(teacher.expected_macs(10.0)), 0.6),
    ]
    step = DistillStep(student, teacher, targets, recipe, torch.device("cpu"), budgets=budgets)
    values, targets_now, _ = step(0, torch.randn(2, 8000))
    assert targets_now == {"target_sparsity": 0.5, "target_macs_sparsity": 0.6}
    for key in ("sparsity", "macs_sparsity", "expected_macs", "lambda1", "macs_lambda1"):
        assert key in values, key
    # both gaps are negative at the start (nothing pruned yet): ascent pushes both lambda1 below zero
    assert float(values["lambda1"]) < 0 and float(values["macs_lambda1"]) < 0


def _fine_teacher(tmp_path: Path, arch: str = "hubert", large: bool = False) -> Path:
    """Fine-grained units (heads of width 2, 32-wide conv) so 0.5% of a target is more than one unit."""
    return save_tiny_teacher(
        tmp_path / "fine",
        arch,
        large,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=32,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
    )


@pytest.mark.parametrize(
    ("arch", "large", "kinds"),
    [
        ("hubert", False, ("params",)),
        ("hubert", False, ("macs",)),
        ("hubert", False, ("params", "macs")),
        ("wavlm", False, ("params", "macs")),
        # the Large layout's conv channels are not prunable: with heads this coarse (each ~1.7% of the MACs) a
        # params and a MACs target pulling apart have no solution within 0.5%, so only one target each
        ("wavlm", True, ("params",)),
        ("wav2vec2", True, ("macs",)),
    ],
)
def test_landing_hits_every_target_within_half_a_percent(
    tmp_path: Path, kinds: tuple[str, ...], arch: str, large: bool
) -> None:
    teacher = load_huggingface(_fine_teacher(tmp_path, arch, large))
    student = make_student(teacher)
    randomise_masks(student, scale=2.0)
    student.eval()
    start = measure(student, 10.0)
    teacher_sizes = {"params": float(teacher.num_params()), "macs": float(teacher.expected_macs(10.0))}
    # targets away from where the masks stand, so landing has to move units both ways across kinds
    wanted = {"params": 0.9 * start["params"], "macs": 1.08 * start["macs"]}
    budgets = [Budget(k, teacher_sizes[k], 1 - wanted[k] / teacher_sizes[k]) for k in kinds]
    record = land(student, budgets, seconds=10.0)
    assert record["landed"], record
    student.prune()
    achieved = {"params": student.num_params(), "macs": count_macs(student, seconds=10.0).macs_per_second}
    for budget in budgets:
        assert abs(achieved[budget.kind] / budget.target - 1) <= 0.005, (budget, achieved)
        assert record["targets"][budget.kind]["after"] == pytest.approx(achieved[budget.kind], rel=1e-6)


@pytest.mark.parametrize(("arch", "large"), [("hubert", False), ("wavlm", True)])
def test_macs_from_the_architecture_alone(tmp_path: Path, arch: str, large: bool) -> None:
    """What the service counts at POST (no weights read) equals the loaded model's count."""
    from core.models import macs_per_second

    directory = save_tiny_teacher(tmp_path / "t", arch, large)
    assert macs_per_second(directory, 10.0) == float(load_huggingface(directory).expected_macs(10.0))

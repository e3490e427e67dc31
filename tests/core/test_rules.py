"""core.rules: each refusal names the spec field at fault; a spec that fits the teacher passes."""

import subprocess
import sys

import pytest

from core.errors import SpecError
from core.rules import check_against_teacher, check_target_weights, dphubert_clusters, fixed_clusters
from core.spec import CompressionSpec

TEACHER = {"num_layers": 12, "num_params": 94_000_000, "macs": 6.9e9}


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"target_params": 200_000_000}, "target_params", "not smaller than the teacher"),
        ({"target_macs": 1e10}, "target_macs", "not smaller than the teacher"),
        ({"clusters": [[0], [13]]}, "clusters", "out of range"),
        ({"clusters": 20}, "clusters", "only 13 representations"),
        ({"target_weights": [1, 2]}, "target_weights", "4 clusters"),
        ({"clusters": [[0], [1, 2]], "target_weights": [1, 2, 3]}, "target_weights", "2 clusters"),
        ({"method": "dphubert", "target_weights": [1, 2]}, "target_weights", "4 clusters"),
    ],
)
def test_each_rule_names_its_field(spec: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError, match=words) as info:
        check_against_teacher(CompressionSpec(**spec), **TEACHER)
    assert info.value.field == field and info.value.code == "spec_invalid"


def test_a_fitting_spec_passes_and_returns_its_explicit_clusters() -> None:
    assert check_against_teacher(CompressionSpec(), **TEACHER) is None
    spec = CompressionSpec(clusters=[[12], [0], [1, 2, 3]], target_weights=[1, 1, 2])
    assert check_against_teacher(spec, **TEACHER) == [[0], [1, 2, 3], [12]]
    fitting = CompressionSpec(target_params=50_000_000, target_macs=3e9, clusters=13, target_weights=[1] * 13)
    assert check_against_teacher(fitting, **TEACHER) is None  # 13 clusters: one per representation r0..r12


def test_rules_the_teacher_cannot_decide_are_skipped() -> None:
    # without the teacher's MACs (the API counts them only when a MACs target is set) that rule is skipped
    assert check_against_teacher(CompressionSpec(target_macs=1e10), num_layers=12, num_params=10**8) is None
    # with clusters="auto" the count of target weights is checked after clustering, not here
    assert check_against_teacher(CompressionSpec(clusters="auto", target_weights=[1, 2]), **TEACHER) is None
    # the default k (4) was not asked for: a teacher with fewer representations clusters what it has
    assert check_against_teacher(CompressionSpec(), num_layers=1, num_params=10**8) is None
    with pytest.raises(SpecError) as info:  # asked for explicitly, it is refused
        check_against_teacher(CompressionSpec(clusters=4), num_layers=1, num_params=10**8)
    assert info.value.field == "clusters"


def test_the_helpers() -> None:
    assert fixed_clusters(CompressionSpec(clusters=[[3, 2], [0]]), 13) == [[0], [2, 3]]
    assert fixed_clusters(CompressionSpec(clusters=4), 13) is None
    check_target_weights(CompressionSpec(target_weights=[1, 2]), [[0], [1]], 12)
    with pytest.raises(SpecError, match="3 clusters"):
        check_target_weights(CompressionSpec(target_weights=[1, 2]), [[0], [1], [2]], 12)


def test_dphubert_layers() -> None:
    assert dphubert_clusters(12) == [[0], [4], [8], [12]]
    assert dphubert_clusters(2) == [[0], [1], [2]]


def test_the_rules_need_neither_torch_nor_numpy() -> None:
    code = "import sys, core.rules; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_stored_spec_is_checked_as_it_was_at_creation() -> None:
    """A job's spec is stored whole; read back, a default k of 4 on a teacher with 3 representations is
    still the default (the worker used to refuse what creation had accepted), and a given one still given."""
    stored = CompressionSpec(stage1_steps=4).model_dump(mode="json")
    with pytest.raises(SpecError):
        fixed_clusters(CompressionSpec.model_validate(stored), 3)  # every field counts as given: refused
    assert fixed_clusters(CompressionSpec.from_stored(stored), 3) is None
    assert CompressionSpec.from_stored(stored) == CompressionSpec(stage1_steps=4)
    given = CompressionSpec.from_stored(CompressionSpec(clusters=5).model_dump(mode="json"))
    with pytest.raises(SpecError, match="clusters=5 but the teacher has only 3"):
        fixed_clusters(given, 3)

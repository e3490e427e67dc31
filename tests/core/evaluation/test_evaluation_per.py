"""PER and greedy CTC decoding on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from core.evaluation.per import ctc_collapse, ctc_greedy_decode, edit_distance, error_rate


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ([], [], 0),
        (["a"], [], 1),  # one deletion
        ([], ["a", "b"], 2),  # two insertions
        (["a", "b", "c"], ["a", "b", "c"], 0),
        (["a", "b", "c"], ["a", "x", "c"], 1),  # substitution
        (["a", "b", "c"], ["a", "c"], 1),  # deletion in the middle
        (["a", "b", "c"], ["a", "b", "b", "c"], 1),  # insertion
        ("kitten", "sitting", 3),  # the textbook case: k->s, e->i, +g
        (["AH", "B", "AW", "T"], ["B", "AH", "AW", "T"], 2),  # a swap is two edits
        (["x", "y"], ["y", "x", "y"], 1),
    ],
)
def test_edit_distance(reference: list[str], hypothesis: list[str], expected: int) -> None:
    assert edit_distance(reference, hypothesis) == expected
    assert edit_distance(hypothesis, reference) == expected  # symmetric with unit costs


def test_error_rate_sums_edits_over_summed_reference_lengths() -> None:
    references = [["a", "b", "c", "d"], ["e"]]
    hypotheses = [["a", "b", "c", "d"], ["f", "g"]]  # 0 edits over 4, then 2 edits over 1
    assert error_rate(references, hypotheses) == pytest.approx(2 / 5)  # not the mean of 0 and 2
    assert error_rate([["a"]], [["a", "b", "c"]]) == pytest.approx(2.0)  # insertions can exceed 100 %


def test_error_rate_rejects_undefined_cases() -> None:
    with pytest.raises(ValueError, match="as many"):
        error_rate([["a"]], [])
    with pytest.raises(ValueError, match="empty"):
        error_rate([[]], [["a"]])


def test_ctc_collapse_merges_runs_then_drops_blanks() -> None:
    assert ctc_collapse([0, 1, 1, 0, 1, 2, 2, 0, 0]) == [1, 1, 2]  # a blank separates a doubled label
    assert ctc_collapse([1, 1, 1, 1]) == [1]
    assert ctc_collapse([0, 0, 0]) == []
    assert ctc_collapse([]) == []
    assert ctc_collapse([3, 3, 5, 3], blank=5) == [3, 3]


def _one_hot_scores(paths: list[list[int]], vocab: int) -> torch.Tensor:
    frames = max(len(p) for p in paths)
    scores = torch.full((len(paths), frames, vocab), -5.0)
    for row, path in enumerate(paths):
        for t, label in enumerate(path):
            scores[row, t, label] = 0.0
    return scores.log_softmax(dim=-1)


def test_greedy_decode_respects_lengths() -> None:
    scores = _one_hot_scores([[1, 1, 0, 2, 2, 3], [2, 0, 2, 1, 1, 1]], vocab=4)
    lengths = torch.tensor([6, 3])
    assert ctc_greedy_decode(scores, lengths) == [[1, 2, 3], [2, 2]]  # row 2 stops before the 1s (padding)
    assert ctc_greedy_decode(scores) == [[1, 2, 3], [2, 2, 1]]


def test_greedy_decode_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(batch, frame, vocab\)"):
        ctc_greedy_decode(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="lengths"):
        ctc_greedy_decode(torch.zeros(2, 3, 4), torch.tensor([3]))


def test_equal_error_rate_against_the_gaussian_formula_and_simple_cases() -> None:
    """Two unit Gaussians d apart (targets above): EER = Phi(-d/2), 0.1587 for d = 2."""
    import math

    import numpy as np

    from core.evaluation.per import equal_error_rate

    rng = np.random.default_rng(0)
    targets, others = rng.normal(1.0, 1.0, 20_000), rng.normal(-1.0, 1.0, 20_000)
    scores = [*targets.tolist(), *others.tolist()]
    same = [True] * len(targets) + [False] * len(others)
    want = 0.5 * math.erfc(1.0 / math.sqrt(2.0))  # Phi(-1)
    assert abs(equal_error_rate(scores, same) - want) < 0.006
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 0.0
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 1.0
    assert equal_error_rate([0.9, 0.2, 0.8, 0.1], [True, True, False, False]) == 0.5
    with pytest.raises(ValueError, match="same-speaker and different-speaker"):
        equal_error_rate([0.5, 0.4], [True, True])

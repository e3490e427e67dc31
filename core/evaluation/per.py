"""Phone error rate and greedy CTC decoding: the scoring half of the phoneme-recognition probe.

PER follows the corpus-level convention of SUPERB (and of sclite/jiwer for WER): the edits of every utterance
are summed and divided by the summed reference lengths. Averaging per-utterance rates instead would let a
short utterance weigh as much as a long one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions, deletions) between two token sequences.

    Two rolling rows keep memory O(len(hypothesis)); phone sequences are short enough that the O(n·m) time
    is irrelevant next to feature extraction.
    """
    previous = list(range(len(hypothesis) + 1))
    for i, ref_token in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_token in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion of ref_token
                current[j - 1] + 1,  # insertion of hyp_token
                previous[j - 1] + (ref_token != hyp_token),  # match or substitution
            )
        previous = current
    return previous[-1]


def error_rate(references: Sequence[Sequence[Hashable]], hypotheses: Sequence[Sequence[Hashable]]) -> float:
    """Corpus error rate: sum of edit distances / sum of reference lengths (a fraction, not a percentage).

    Raises ValueError when the two lists differ in length or when every reference is empty (the rate would be
    undefined, and a silent 0 or inf would hide a labelling bug).
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"expected as many hypotheses as references, found {len(hypotheses)} and {len(references)}"
        )
    total = sum(len(ref) for ref in references)
    if total == 0:
        raise ValueError("every reference is empty: the error rate is undefined")
    edits = sum(edit_distance(ref, hyp) for ref, hyp in zip(references, hypotheses, strict=True))
    return edits / total


def ctc_collapse(ids: Sequence[int], blank: int = 0) -> list[int]:
    """Merge runs of the same id, then drop blanks: the CTC many-to-one map from a frame path to a label
    string.

    Order matters: `a blank a` stays `a a` while `a a` becomes `a`, which is how CTC emits doubled labels.
    """
    out: list[int] = []
    previous: int | None = None
    for token in ids:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def ctc_greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0
) -> list[list[int]]:
    """Best path decoding: the arg-max label per frame, collapsed.

    Args:
        log_probs: (batch, frame, vocab) scores (log-probabilities or logits: the arg-max is the same).
        lengths: (batch,) valid frames per row; frames past it are padding and never decoded. None = all.
        blank: the blank id (0 in this project).
    Returns:
        One list of label ids per row, blanks removed.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"expected log_probs of shape (batch, frame, vocab), found {tuple(log_probs.shape)}")
    best = log_probs.argmax(dim=-1).cpu()  # (batch, frame)
    if lengths is None:
        lengths = torch.full((best.shape[0],), best.shape[1], dtype=torch.int64)
    if lengths.shape != (best.shape[0],):
        raise ValueError(f"expected lengths of shape ({best.shape[0]},), found {tuple(lengths.shape)}")
    return [ctc_collapse(row[: int(n)].tolist(), blank) for row, n in zip(best, lengths.cpu(), strict=True)]


def equal_error_rate(scores: Sequence[float], same: Sequence[bool]) -> float:
    """Speaker verification's equal error rate of trial `scores` (higher: more alike) whose `same` says which
    trials pair two utterances of one speaker: the rate at the threshold where false acceptances (other
    speakers' trials scoring at or above it) and false rejections (same-speaker trials below it) meet,
    linearly interpolated between the two thresholds around the crossing (a fraction).

    ValueError without both kinds of trial."""
    pairs = sorted(zip(scores, same, strict=True))
    targets = sum(1 for _, t in pairs if t)
    others = len(pairs) - targets
    if not targets or not others:
        raise ValueError("an equal error rate needs same-speaker and different-speaker trials")
    # threshold just above pairs[i]: every trial up to i is rejected
    frr, far, best = 0.0, 1.0, None
    rejected_targets = rejected_others = 0
    previous = (0.0, 1.0)
    for _, is_target in pairs:
        if is_target:
            rejected_targets += 1
        else:
            rejected_others += 1
        frr, far = rejected_targets / targets, 1.0 - rejected_others / others
        if frr >= far:
            (frr0, far0) = previous
            # the two rates cross between the previous threshold and this one
            gap0, gap1 = far0 - frr0, frr - far
            w = gap0 / (gap0 + gap1) if gap0 + gap1 > 0 else 0.0
            best = (frr0 + w * (frr - frr0) + far0 + w * (far - far0)) / 2
            break
        previous = (frr, far)
    return float(best if best is not None else (frr + far) / 2)


__all__ = ["equal_error_rate", "ctc_collapse", "ctc_greedy_decode", "edit_distance", "error_rate"]

"""Distillation targets and loss (algorithm.md §3).

SKILL: for each cluster C of teacher representations, the target is the mean of r_T[i] over i in C and the
prediction is P_C(mean of r_S[i] over i in C) (or P_C(r_S[max C]) with `student_mapping="last"`), with P_C a
Linear(D, D) initialised to the identity. DPHuBERT is the same code with clusters [[0],[L/3],[2L/3],[L]] and
one projection shared by the non-zero layers.

A fine-tuned teacher's task head adds terms (`TaskDistill`): the student carries a trainable copy of the
head and is trained to match the teacher head's softened outputs (core.models.heads.task_distill_loss)
and, with `input_weight`, the student's head input (its last hidden state) is pulled to the teacher's, so
the copied head reads what it was trained on. With `supervised_weight`, labelled utterances train the head on
their labels too: a classifier's on the training crops (a crop keeps its utterance's label), a CTC head's on
whole utterances served beside the crops (a transcript fits only the utterance it transcribes).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.models.heads import TaskHead, ctc_loss, embedding_distill_loss, task_distill_loss


class ClusterTargets(nn.Module):
    """Turns teacher and student representations into (target, prediction) pairs, one per cluster."""

    def __init__(
        self,
        clusters: Sequence[Sequence[int]],
        dim: int,
        *,
        student_mapping: str = "mean",
        shared_projection: bool = False,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if student_mapping not in ("mean", "last"):
            raise ValueError(f"student_mapping must be 'mean' or 'last', found {student_mapping!r}")
        self.clusters = [sorted(int(i) for i in c) for c in clusters]
        if weights is not None and len(weights) != len(self.clusters):
            raise ValueError(f"{len(weights)} target weights for {len(self.clusters)} clusters")
        # None: equal weights (the method as published); otherwise scaled to a mean of 1, so the loss keeps
        # its scale against the Lagrangian terms.
        self.weights = None if weights is None else [len(weights) * float(w) / sum(weights) for w in weights]
        self.student_mapping = student_mapping
        self.shared_projection = shared_projection
        # DPHuBERT: r[0] keeps its own projection, the transformer layers share one.
        n_proj = (
            (2 if any(c == [0] for c in self.clusters) else 1) if shared_projection else len(self.clusters)
        )
        linears = [nn.Linear(dim, dim) for _ in range(n_proj)]
        for p in linears:
            nn.init.eye_(p.weight)
            nn.init.zeros_(p.bias)
        self.projections = nn.ModuleList(linears)
        self.task: TaskDistill | None = None

    def add_task(self, task: TaskDistill) -> None:
        """Distil the teacher's task head too (saved and restored with the targets, under `task.`)."""
        self.task = task

    @property
    def max_layer(self) -> int:
        """Highest representation index any target needs: the teacher need not run beyond it (a task head
        reads the last layer)."""
        deepest = max(max(c) for c in self.clusters)
        return max(deepest, self.task.num_layers) if self.task is not None else deepest

    def _projection(self, k: int) -> nn.Linear:
        if not self.shared_projection:
            return self.projections[k]  # type: ignore[return-value]
        if len(self.projections) == 2:
            return self.projections[0 if self.clusters[k] == [0] else 1]  # type: ignore[return-value]
        return self.projections[0]  # type: ignore[return-value]

    def teacher_targets(self, reps: Sequence[Tensor]) -> list[Tensor]:
        """[(batch, frame, feature)] per cluster: the mean of the cluster's teacher representations."""
        return [
            torch.stack([reps[i] for i in c]).mean(0) if len(c) > 1 else reps[c[0]] for c in self.clusters
        ]

    def student_predictions(self, reps: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for k, c in enumerate(self.clusters):
            if self.student_mapping == "last" or len(c) == 1:
                x = reps[c[-1]]
            else:
                x = torch.stack([reps[i] for i in c]).mean(0)
            out.append(self._projection(k)(x))
        return out


class HeadPass(NamedTuple):
    """A task head's pass over an encoder's representations: what it read and what it gave."""

    inputs: Tensor  # (batch, frame, hidden): TaskHead.input_of
    outputs: Tensor  # logits or embeddings


class TaskDistill(nn.Module):
    """The teacher's task head (frozen) and the student's copy of it (trained): the student's task outputs are
    pulled towards the teacher's with `weight` * KL at `temperature` (core.models.heads.task_distill_loss),
    and its head input towards the teacher's with `input_weight` * (L1 - cosine), as the cluster targets.
    `labels` (with `supervised_weight`): utterance id -> label index for a classifier, or -> token ids (its
    transcript) for a CTC head, kept as `transcripts`."""

    def __init__(
        self,
        head: TaskHead,
        *,
        weight: float,
        temperature: float,
        supervised_weight: float = 0.0,
        labels: dict[str, Any] | None = None,
        input_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.teacher_head = copy.deepcopy(head).eval().requires_grad_(False)
        self.student_head = copy.deepcopy(head).train().requires_grad_(True)
        self.weight, self.temperature = float(weight), float(temperature)
        self.input_weight = float(input_weight)
        self.supervised_weight = float(supervised_weight) if labels else 0.0
        ctc = head.spec.task == "ctc"
        self.labels: dict[str, int] = {} if ctc else dict(labels or {})
        self.transcripts: dict[str, list[int]] = dict(labels or {}) if ctc else {}
        self.blank = int(head.spec.config.get("pad_token_id") or 0)
        self.num_layers = head.num_layers

    def train(self, mode: bool = True) -> TaskDistill:
        super().train(mode)
        self.teacher_head.eval()  # frozen: the teacher's outputs are the targets
        return self

    def teacher_pass(self, teacher: Any, reps: list[Tensor]) -> HeadPass:
        x = self.teacher_head.input_of(teacher, reps)
        return HeadPass(x, self.teacher_head.on_input(x))

    def student_pass(self, student: Any, reps: list[Tensor]) -> HeadPass:
        x = self.student_head.input_of(student, reps)
        return HeadPass(x, self.student_head.on_input(x))

    def input_loss(self, student: HeadPass, teacher: HeadPass) -> Tensor | None:
        """L1 - cosine between the student's and the teacher's head inputs (unweighted), or None when the
        term is off."""
        if not self.input_weight:
            return None
        return distill_loss([student.inputs], [teacher.inputs])[0]

    def loss(self, student_outputs: Tensor, teacher_outputs: Tensor) -> Tensor:
        """The unweighted term (the caller multiplies by `weight`): the softened KL of the outputs, or for
        an x-vector head the layer targets' L1 - cosine on the speaker embeddings (what verification
        compares)."""
        if self.student_head.spec.task == "xvector":
            return embedding_distill_loss(student_outputs, teacher_outputs)
        return task_distill_loss(student_outputs, teacher_outputs, self.temperature)

    def supervised_loss(self, student_outputs: Tensor, ids: Sequence[str]) -> Tensor | None:
        """Cross-entropy of the student's utterance logits against the labels of the batch's labelled
        utterances (unweighted), or None when the term is off or no utterance of the batch has a label."""
        if not self.supervised_weight or not ids or not self.labels:
            return None
        wanted = torch.tensor([self.labels.get(i, -100) for i in ids], device=student_outputs.device)
        if not bool((wanted >= 0).any()):
            return None
        return F.cross_entropy(student_outputs.float(), wanted, ignore_index=-100)

    def transcript_loss(self, student_outputs: Tensor, ids: Sequence[str]) -> Tensor:
        """CTC loss of the student's CTC logits (batch, frame, vocab) over whole utterances against their
        transcripts (unweighted; transformers' ctc_loss_reduction "mean", blank = the head's pad token)."""
        return ctc_loss(student_outputs, [self.transcripts[i] for i in ids], self.blank)


def distill_loss(
    predictions: Sequence[Tensor],
    targets: Sequence[Tensor],
    frame_mask: Tensor | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean over targets of (mean L1 - mean cosine similarity), padded frames excluded; with `weights`, each
    target's term is multiplied by its weight first (the reported parts stay unweighted).

    predictions, targets: [(batch, frame, feature)]; frame_mask: (batch, frame) bool or None.
    Returns the loss and per-part values (kept as tensors so the caller decides when to synchronise).
    """
    l1_sum: Tensor | None = None
    cos_sum: Tensor | None = None
    terms: list[Tensor] = []
    for pred, tgt in zip(predictions, targets):
        pred = pred.float()
        tgt = tgt.float()
        frames = min(pred.shape[1], tgt.shape[1])
        pred, tgt = pred[:, :frames], tgt[:, :frames]
        l1 = (pred - tgt).abs().mean(-1)  # (batch, frame)
        cos = F.cosine_similarity(pred, tgt, dim=-1)  # (batch, frame)
        if frame_mask is not None:
            m = frame_mask[:, :frames].to(l1.dtype)
            denom = m.sum().clamp(min=1.0)
            l1_m, cos_m = (l1 * m).sum() / denom, (cos * m).sum() / denom
        else:
            l1_m, cos_m = l1.mean(), cos.mean()
        terms.append(l1_m - cos_m)
        l1_sum = l1_m if l1_sum is None else l1_sum + l1_m
        cos_sum = cos_m if cos_sum is None else cos_sum + cos_m
    assert l1_sum is not None and cos_sum is not None
    n = len(predictions)
    weighted = (
        (l1_sum - cos_sum)
        if weights is None
        else torch.stack([w * t for w, t in zip(weights, terms, strict=True)]).sum()
    )
    loss = weighted / n
    return loss, {"l1": l1_sum.detach() / n, "cos": cos_sum.detach() / n}

"""The pieces a training stage is built from: the student and its cluster targets, the batches, and the saved
states between stages.

Used by both ways a training stage runs, in this process (`core.distill.stage`) and on data-parallel ranks
(`core.distill.parallel`), so a rank rebuilds exactly what one process would have built. It imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.data import AudioCatalog, TrainBatches, WholeUtterances
from core.distill.targets import ClusterTargets, TaskDistill
from core.errors import AudioError, SpecError
from core.inputs import supervised_weight
from core.models import ModelConfig, SpeechEncoder, build_model, make_student
from core.models.heads import TaskHead
from core.spec import CompressionSpec, TrainRecipe

FINALIZED = Path("finalize") / "student.pt"
STAGE2_RESULT = Path("final_distill") / "student.pt"


def cluster_targets(
    clusters: list[list[int]],
    dim: int,
    spec: CompressionSpec,
    head: TaskHead | None = None,
    labels: dict[str, int] | None = None,
) -> ClusterTargets:
    """The distillation targets of `spec`'s method: SKILL's one projection per cluster, or DPHuBERT's shared
    projection (algorithm.md §3); with the teacher's task `head`, the task term too."""
    try:  # ClusterTargets checks one weight per cluster; after 'auto' clustering that is the user's spec
        targets = ClusterTargets(
            clusters,
            dim,
            student_mapping=spec.student_mapping,
            shared_projection=spec.method == "dphubert",
            weights=spec.target_weights,
        )
    except ValueError as exc:
        raise SpecError(f"target_weights: {exc} ({clusters}); give one weight per cluster") from None
    if head is not None:
        targets.add_task(
            TaskDistill(
                head,
                weight=spec.task_weight,
                temperature=spec.task_temperature,
                supervised_weight=supervised_weight(spec, head, bool(labels)),
                labels=labels,
                input_weight=spec.task_input_weight,
            )
        )
    return targets


def new_student(
    teacher: SpeechEncoder,
    clusters: list[list[int]],
    spec: CompressionSpec,
    device: torch.device,
    head: TaskHead | None = None,
    labels: dict[str, int] | None = None,
) -> tuple[SpeechEncoder, ClusterTargets]:
    """Stage 1's student (the teacher with masks, seeded: mask initialisation is random) and its targets."""
    torch.manual_seed(spec.seed)
    student = make_student(teacher, layers=spec.prune_layers)
    return student, cluster_targets(clusters, teacher.config.hidden_size, spec, head, labels).to(device)


def train_batches(
    catalog: AudioCatalog,
    sample_rate: int,
    recipe: TrainRecipe,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    accumulation: int = 1,
) -> TrainBatches:
    """The stage's batch plan; audio that cannot fill it is an `AudioError` (bad input, not a crash)."""
    try:
        return TrainBatches(
            catalog,
            sample_rate=sample_rate,
            batch_seconds=recipe.batch_seconds,
            min_utterance_s=recipe.min_utterance_s,
            max_utterance_s=recipe.max_utterance_s,
            seed=seed,
            rank=rank,
            world_size=world_size,
            accumulation=accumulation,
            speed_perturbation=recipe.speed_perturbation,
        )
    except AudioError:
        raise
    except ValueError as exc:
        raise AudioError(str(exc)) from None


def transcribed(
    catalog: AudioCatalog,
    targets: ClusterTargets,
    sample_rate: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> WholeUtterances | None:
    """The whole utterances a CTC head's supervised term trains on (one per step and rank), or None when the
    targets have no transcripts (no CTC head, or the term is off)."""
    if targets.task is None or not targets.task.transcripts:
        return None
    ids = list(targets.task.transcripts)
    return WholeUtterances(catalog, ids, sample_rate, seed, rank=rank, world_size=world_size)


def restore(
    state: dict[str, Any],
    clusters: list[list[int]],
    dim: int,
    spec: CompressionSpec,
    head: TaskHead | None = None,
    labels: dict[str, int] | None = None,
) -> tuple[SpeechEncoder, ClusterTargets]:
    """Student and targets from a saved state {"config", "student", "targets"} (a checkpoint or a stage
    result); `head`: the teacher's task head when the run keeps it (its trained copy is in the state)."""
    student = build_model(ModelConfig.from_dict(state["config"]))
    student.load_state_dict(state["student"])
    targets = cluster_targets(clusters, dim, spec, head, labels)
    targets.load_state_dict(state["targets"])
    return student, targets


def save_result(path: Path, student: SpeechEncoder, targets: ClusterTargets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": student.config.to_dict(),
            "student": {k: v.cpu() for k, v in student.state_dict().items()},
            "targets": {k: v.cpu() for k, v in targets.state_dict().items()},
        },
        path,
    )


def load_result(
    workdir: Path,
    which: Path,
    clusters: list[list[int]],
    dim: int,
    spec: CompressionSpec,
    device: torch.device | str = "cpu",
    head: TaskHead | None = None,
    labels: dict[str, int] | None = None,
) -> tuple[SpeechEncoder, ClusterTargets]:
    """A stage result saved by `save_result` (`FINALIZED` or `STAGE2_RESULT`), on `device`."""
    state = torch.load(workdir / which, map_location="cpu", weights_only=False)
    student, targets = restore(state, clusters, dim, spec, head, labels)
    return student.to(device), targets.to(device)


__all__ = [
    "FINALIZED",
    "STAGE2_RESULT",
    "cluster_targets",
    "load_result",
    "new_student",
    "restore",
    "save_result",
    "train_batches",
]

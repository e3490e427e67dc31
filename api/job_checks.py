"""What POST /v1/jobs (and its dry run) checks before anything is written or estimated, each refusal a 422:

    check_spec_bounds   this deployment's limits (settings), so a job cannot ask for 10^12 steps
    check_references    the teacher and datasets exist for the owner; the spec fits the teacher's shape
    check_size_targets  no size target below the smallest student of the teacher's layout, and a MACs
                        target below the teacher's MACs (counted by the engine, lazily; the smallest
                        student's sizes are kept per teacher, whose files never change)
    check_task_head     a fine-tuned teacher's head can be kept (or the spec drops it)

The spec rules that need the teacher are core.rules', the ones the pipeline applies before a run, so a job
accepted here is not refused by its worker for one of them. Spec-only checks are CompressionSpec's
validators (422 from the request's validation).
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session

from api.deps import Services
from api.errors import UnprocessableInput
from api.schemas import JobCreate
from api.uploads import input_error
from core.errors import SkillkdError, SpecError
from core.rules import check_against_teacher
from core.spec import CompressionSpec
from service import crud
from service.models import Dataset, Owner, Teacher
from service.settings import Settings


def spec_error(field: str, message: str) -> UnprocessableInput:
    """422 spec_invalid naming the field: `spec.<field>: <message>`."""
    return UnprocessableInput(f"spec.{field}: {message}", code="spec_invalid")


def check_job(body: JobCreate, services: Services, session: Session, owner: Owner) -> Teacher:
    """Every check of a job creation, in order (the cheap ones first; the engine last): its teacher."""
    check_spec_bounds(body.spec, services.settings)
    teacher, dataset = check_references(session, owner, body)
    check_size_targets(body.spec, services, teacher)
    check_task_head(body.spec, services, teacher, dataset.summary if dataset is not None else None)
    return teacher


def check_spec_bounds(spec: CompressionSpec, settings: Settings) -> None:
    """Limits of this deployment (settings), so a job cannot ask for 10^12 steps."""
    for field in ("stage1_steps", "stage2_steps", "checkpoint_every"):
        value = getattr(spec, field)
        if value is not None and value > settings.max_stage_steps:
            raise spec_error(field, f"{value} is above this service's limit of {settings.max_stage_steps}")
    if spec.calibration_utterances > settings.max_calibration_utterances:
        raise spec_error(
            "calibration_utterances",
            f"{spec.calibration_utterances} is above this service's "
            f"limit of {settings.max_calibration_utterances}",
        )
    if spec.batch_seconds is not None and spec.batch_seconds > settings.max_batch_seconds:
        raise spec_error(
            "batch_seconds",
            f"{spec.batch_seconds:g} is above this service's limit of {settings.max_batch_seconds:g}",
        )


def check_references(session: Session, owner: Owner, body: JobCreate) -> tuple[Teacher, Dataset | None]:
    """The teacher and datasets exist for this owner, and the spec fits the teacher (what only the teacher
    can tell: its size, its number of layers). Returns the teacher and the job's dataset (`dataset_id`)."""
    teacher = crud.owned(session, model=Teacher, row_id=body.teacher_id, owner_id=owner.id)
    if teacher is None:
        raise UnprocessableInput(f"teacher_id: teacher {body.teacher_id} not found", code="teacher_not_found")
    spec = body.spec
    main: Dataset | None = None
    for field in ("dataset_id", "calibration_dataset_id"):
        value = getattr(body, field)
        if value is None:
            continue
        dataset = crud.owned(session, model=Dataset, row_id=value, owner_id=owner.id)
        if dataset is None:
            raise UnprocessableInput(f"{field}: dataset {value} not found", code="dataset_not_found")
        if field == "dataset_id":
            main = dataset
        if field == "dataset_id" and spec.evaluate and (dataset.summary or {}).get("phone_labelled") == 0:
            raise spec_error(
                "evaluate",
                "evaluation needs a dataset manifest with an 'arpabet' phone field and "
                f"'split' rows; dataset {value} has none (run without evaluate, or upload one)",
            )
    check_teacher_shape(spec, teacher)
    return teacher, main


def check_teacher_shape(
    spec: CompressionSpec,
    teacher: Teacher,
    macs: float | None = None,
    smallest: dict[str, float] | None = None,
) -> None:
    """core.rules, the rules the pipeline applies: size targets (the MACs target only when `macs` is given;
    against the smallest student when its sizes are given), explicit clusters, target weights. A SpecError
    becomes 422 spec_invalid naming its field."""
    try:
        check_against_teacher(
            spec, num_layers=teacher.num_layers, num_params=teacher.num_params, macs=macs, smallest=smallest
        )
    except SpecError as exc:
        field = exc.field or "spec"
        raise spec_error(field, exc.message.removeprefix(f"{field}: ")) from exc


def check_size_targets(spec: CompressionSpec, services: Services, teacher: Teacher) -> None:
    """No size target (parameters or MACs) below the smallest student of the teacher's layout, which no run
    can reach (the dry run and the worker refuse it too); an absolute MACs target below the teacher's MACs at
    the spec's reference length. The teacher row holds no MACs (they depend on that length), so the engine
    counts both from the architecture; it (torch) is loaded on the first job of the process, and a
    teacher's smallest student is counted once per reference length (a teacher's files never change)."""
    engine, path = services.get_engine(), services.storage.teacher_dir(teacher.id)
    seconds = spec.macs_reference_seconds
    try:
        teacher_macs = engine.teacher_macs(path, seconds) if spec.has_macs_target else None
        key = (teacher.id, teacher.sha256, seconds)
        with _SMALLEST_LOCK:
            smallest = _SMALLEST.get(key)
        if smallest is None:
            smallest = engine.smallest_student(path, seconds)
            with _SMALLEST_LOCK:
                while len(_SMALLEST) >= _SMALLEST_KEPT:
                    _SMALLEST.pop(next(iter(_SMALLEST)))
                _SMALLEST[key] = smallest
    except SkillkdError as exc:
        raise input_error(exc, services.storage.root) from exc
    if teacher_macs is None:
        smallest = {"params": smallest["params"]}  # the MACs target is unset: its floor does not apply
    check_teacher_shape(spec, teacher, macs=teacher_macs, smallest=smallest)


def check_task_head(
    spec: CompressionSpec, services: Services, teacher: Teacher, dataset_summary: dict | None = None
) -> None:
    """A fine-tuned teacher's head: one the engine cannot keep (x-vector, an unknown class, weights or a
    tokenizer that do not match its config) is 422 unless the spec drops it (`drop_head`); a weighted head
    with `prune_layers` is 422 naming that field; the supervised term (`task_supervised_weight`) on a dataset
    whose manifest holds none of the classifier's labels is 422 naming `task_supervised_weight` or
    `task_label_field` (by the label values its upload's scan kept; a dataset scanned before they were kept
    is checked by the run). The engine reads the head's config and weights alone."""
    label_values = (dataset_summary or {}).get("label_values")
    try:
        services.get_engine().task_head(services.storage.teacher_dir(teacher.id), spec, label_values)
    except SpecError as exc:
        field = exc.field or "spec"
        raise spec_error(field, exc.message.removeprefix(f"{field}: ")) from exc
    except SkillkdError as exc:
        raise input_error(exc, services.storage.root) from exc


# (teacher id, its sha256, MACs reference seconds) -> the engine's smallest_student; oldest dropped first
_SMALLEST: dict[tuple[str, str, float], dict[str, float]] = {}
_SMALLEST_KEPT = 256
_SMALLEST_LOCK = threading.Lock()


__all__ = [
    "spec_error",
    "check_job",
    "check_spec_bounds",
    "check_references",
    "check_teacher_shape",
    "check_size_targets",
]

"""Data access for the owned resources (teachers, datasets, jobs' read side): keyword-only functions the
routes call, so no route builds a query or commits by itself. Job state changes are in service/jobstore.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Select, delete, select
from sqlalchemy.orm import Session

from service.models import NON_TERMINAL_STATUSES, Artifact, Dataset, Job, JobEvent, Teacher
from service.storage import LocalStorage

Row = TypeVar("Row")


def owned(session: Session, *, model: type[Row], row_id: str, owner_id: str) -> Row | None:
    """The row with this id if it belongs to `owner_id`; None otherwise (another owner's row does not
    exist)."""
    row = session.get(model, row_id)
    return row if row is not None and row.owner_id == owner_id else None  # type: ignore[attr-defined]


def page(
    session: Session,
    *,
    model: type[Row],
    owner_id: str,
    limit: int,
    after: str | None,
    where: list[Any] | None = None,
) -> tuple[list[Row], str | None]:
    """One page of the owner's rows, newest id first, and the cursor of the next page (None on the last).
    Ids are time-ordered, so `after` (the previous page's last id) is a stable cursor under inserts."""
    column = model.id  # type: ignore[attr-defined]
    query: Select[Any] = select(model).where(model.owner_id == owner_id, *(where or []))  # type: ignore[attr-defined]
    if after:
        query = query.where(column < after)
    rows = list(session.scalars(query.order_by(column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)  # type: ignore[attr-defined]


def dataset_path(session: Session, *, storage: LocalStorage, dataset_id: str) -> Path:
    """Where a dataset's audio is: the registered server directory, or its folder in storage."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is not None and dataset.source == "server_path" and dataset.server_path:
        return Path(dataset.server_path)
    return storage.dataset_dir(dataset_id)


def same_upload(session: Session, *, model: type[Row], owner_id: str, sha256: str) -> Row | None:
    """The owner's upload (teacher or dataset) of an archive with this sha256, if they still have it: at most
    one row, the unique index on (owner_id, sha256) holds every row (migration 0004 merged earlier
    duplicates)."""
    query = (
        select(model)
        .where(model.owner_id == owner_id, model.sha256 == sha256)  # type: ignore[attr-defined]
        .order_by(model.id)  # type: ignore[attr-defined]
        .limit(1)
    )
    return session.scalars(query).first()


def insert(session: Session, *, row: Any) -> Any:
    session.add(row)
    session.commit()
    return row


def jobs_using(
    session: Session,
    *,
    teacher_id: str | None = None,
    dataset_id: str | None = None,
    non_terminal: bool = False,
) -> list[str]:
    """Ids of the jobs that reference this teacher or dataset (as training or calibration audio)."""
    query = select(Job.id).where(_uses(teacher_id=teacher_id, dataset_id=dataset_id))
    if non_terminal:
        query = query.where(Job.status.in_(NON_TERMINAL_STATUSES))
    return list(session.scalars(query.order_by(Job.id)))


def _uses(*, teacher_id: str | None = None, dataset_id: str | None = None) -> ColumnElement[bool]:
    if teacher_id is not None:
        return Job.teacher_id == teacher_id
    return (Job.dataset_id == dataset_id) | (Job.calibration_dataset_id == dataset_id)


def delete_jobs(session: Session, *, job_ids: list[str]) -> None:
    """Remove finished jobs' rows (events and artifacts first); the caller removes their files."""
    if job_ids:
        session.execute(delete(Artifact).where(Artifact.job_id.in_(job_ids)))
        session.execute(delete(JobEvent).where(JobEvent.job_id.in_(job_ids)))
        session.execute(delete(Job).where(Job.id.in_(job_ids)))


def delete_resource(session: Session, *, model: type[Teacher] | type[Dataset], row_id: str) -> list[str]:
    """Delete a teacher or dataset row unless an unfinished job (queued, running, pausing, paused, cancelling:
    a paused job resumes from its checkpoint and needs its inputs) uses it; returns the ids of those jobs
    (nothing is deleted then). Finished jobs keep the input's id (`Job.teacher_id`, ...); the database clears
    their foreign keys (`Job.teacher_ref`, ...: ON DELETE SET NULL). The caller removes the files after this
    commits.

    The check is inside the DELETE statement (`... WHERE NOT EXISTS (unfinished job)`), so no job created
    between a check and the delete can lose its input: on SQLite the statement holds the database's write lock
    throughout; on PostgreSQL the row is locked first (FOR UPDATE), so a job being inserted on it (its foreign
    key check takes a share lock on the row) either committed before the statement's snapshot, and is seen, or
    waits and then fails on the missing row (IntegrityError: the route answers teacher_not_found)."""
    key = {"teacher_id": row_id} if model is Teacher else {"dataset_id": row_id}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(model.id).where(model.id == row_id).with_for_update())
    in_use = select(Job.id).where(_uses(**key), Job.status.in_(NON_TERMINAL_STATUSES)).exists()
    result = session.execute(delete(model).where(model.id == row_id, ~in_use))
    if cast(CursorResult[Any], result).rowcount == 1:
        session.commit()
        return []
    users = jobs_using(session, non_terminal=True, **key)
    session.rollback()
    return users  # empty: someone else deleted it meanwhile, which is what the caller asked for


__all__ = [
    "owned",
    "page",
    "dataset_path",
    "same_upload",
    "insert",
    "jobs_using",
    "delete_jobs",
    "delete_resource",
]

"""Job state transitions, shared by the API, the worker and the reaper.

Every transition is a conditional UPDATE (`... WHERE status IN (...)`), so two processes racing on one job
(an API cancel and a worker finishing, two workers after a redelivery, two reapers) cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Update, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from service.crud import delete_jobs
from service.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Artifact, Job, JobEvent, new_id, utcnow


def updated(session: Session, statement: Update) -> int:
    """Run an UPDATE; the number of rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def transition(session: Session, *, job_id: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
    """Set `values` on the job if its status is one of `from_statuses`; True if it was."""
    values.setdefault("updated_at", utcnow())
    return updated(session, update(Job).where(Job.id == job_id, Job.status.in_(from_statuses)).values(**values)) == 1


def count_in_flight(session: Session, *, owner_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES))
    ) or 0


@dataclass(frozen=True)
class Claim:
    """Outcome of a worker picking up a delivery: run it, or why not."""

    run: bool
    reason: str = ""
    attempts: int = 0


def claim(session: Session, *, job_id: str, worker: str, stale_before: datetime, max_attempts: int) -> Claim:
    """Mark a delivered job running for `worker`, unless it is terminal or alive elsewhere.

    A running job whose heartbeat is older than `stale_before` is taken over (its worker died). Each claim
    counts one attempt; beyond `max_attempts` the job fails with `too_many_attempts`.
    """
    now = utcnow()
    claimable = (Job.status == "queued") | (
        (Job.status == "running") & ((Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < stale_before))
    )
    claimed = updated(session, update(Job).where(Job.id == job_id, claimable).values(
        status="running", attempts=Job.attempts + 1, worker=worker, heartbeat_at=now, updated_at=now,
        started_at=func.coalesce(Job.started_at, now)))
    if claimed != 1:
        job = session.get(Job, job_id)
        session.commit()
        return Claim(False, "missing" if job is None else f"status {job.status}")
    attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
    if attempts > max_attempts:
        transition(session, job_id=job_id, from_statuses=("running",), status="failed",
                   error_code="too_many_attempts",
                   error_message=f"the job was started {attempts - 1} times and its worker died each time "
                                 f"(limit {max_attempts})",
                   finished_at=now, worker=None)
        session.commit()
        return Claim(False, "too_many_attempts", attempts)
    session.commit()
    return Claim(True, attempts=attempts)


def heartbeat(session: Session, *, job_id: str, worker: str) -> bool:
    beat = updated(session, update(Job).where(
        Job.id == job_id, Job.worker == worker, Job.status.in_(("running", "cancelling", "pausing"))
    ).values(heartbeat_at=utcnow()))
    session.commit()
    return beat == 1


def add_event(session: Session, *, job_id: str, kind: str, stage: str = "", step: int = 0, total: int = 0,
              eta_s: float | None = None, duration_s: float | None = None, metrics: dict | None = None,
              message: str = "") -> JobEvent:
    row = JobEvent(job_id=job_id, kind=kind, stage=stage, step=step, total=total, eta_s=eta_s,
                   duration_s=duration_s, metrics=metrics or {}, message=message)
    session.add(row)
    return row


def stale_cutoff(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


# -- what the routes call -------------------------------------------------------------------------------------
def by_idempotency_key(session: Session, *, owner_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def create_job(session: Session, *, owner_id: str, teacher_id: str, dataset_id: str,
               calibration_dataset_id: str | None, spec: dict[str, Any], idempotency_key: str | None) -> Job:
    """Insert a queued job and its first event and COMMIT (raises IntegrityError on a concurrent duplicate
    Idempotency-Key, or when the teacher or a dataset was deleted since the caller checked it; the session is
    rolled back then). Enqueue only after this returns."""
    now = utcnow()
    job = Job(id=new_id("job"), owner_id=owner_id, teacher_id=teacher_id, dataset_id=dataset_id,
              calibration_dataset_id=calibration_dataset_id, teacher_ref=teacher_id, dataset_ref=dataset_id,
              calibration_dataset_ref=calibration_dataset_id, spec=spec, status="queued", progress={}, metrics={},
              attempts=0, idempotency_key=idempotency_key, enqueued_at=now, created_at=now, updated_at=now)
    session.add(job)
    add_event(session, job_id=job.id, kind="status", message="queued")
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    return job


def _change(session: Session, job: Job, steps: list[tuple[tuple[str, ...], dict[str, Any], str]]) -> str | None:
    """Try each (from statuses, values, event message) in order; commit the first that applies. Returns the
    status reached, or None when none applied (the job is refreshed so the caller sees why)."""
    for from_statuses, values, message in steps:
        if transition(session, job_id=job.id, from_statuses=from_statuses, **values):
            add_event(session, job_id=job.id, kind="status", message=message)
            session.commit()
            session.refresh(job)
            return str(values["status"])
    session.rollback()
    session.refresh(job)
    return None


def cancel(session: Session, *, job: Job) -> str | None:
    """queued or paused -> cancelled at once; running or pausing -> cancelling (the worker stops at its next
    check). None if the job is already finished."""
    return _change(session, job, [
        (("queued", "paused"), {"status": "cancelled", "finished_at": utcnow()}, "cancelled before running"),
        (("running", "pausing"), {"status": "cancelling"}, "cancelling"),
    ])


def pause(session: Session, *, job: Job) -> str | None:
    """queued -> paused at once; running -> pausing (the worker checkpoints and stops at its next check, then
    the job is paused). None if the job cannot be paused (finished, cancelling, already paused)."""
    return _change(session, job, [
        (("queued",), {"status": "paused"}, "paused before running"),
        (("running",), {"status": "pausing"}, "pausing"),
    ])


def resume(session: Session, *, job: Job) -> str | None:
    """paused -> queued (the caller enqueues it; it continues from its checkpoint). None if not paused."""
    return _change(session, job, [
        (("paused",), {"status": "queued", "enqueued_at": utcnow(), "worker": None}, "resumed: queued"),
    ])


def delete_finished(session: Session, *, job: Job) -> bool:
    """Delete a finished job's rows; False (nothing deleted) if it is not finished."""
    if job.status not in TERMINAL_STATUSES:
        return False
    delete_jobs(session, job_ids=[job.id])
    session.commit()
    return True


def owned_job_row(reads: Engine, *, job_id: str, owner_id: str) -> Any | None:
    """The job as a read-only row (attribute access like the ORM object) if `owner_id` owns it: one Core
    SELECT on a connection of `reads` (api.app.reads_engine), without a session (the hot path of GET
    /v1/jobs/{id}: a session's transaction cost PostgreSQL a BEGIN and a ROLLBACK round trip, and its close ran
    on the event loop; py-spy, issue 11). `reads` does not ping a connection before use, so a connection the
    database closed (a restart) fails here once; SQLAlchemy then discards the pool's older connections and the
    read is repeated on a new one (a read can be repeated safely)."""
    for attempt in (1, 2):
        try:
            with reads.connect() as connection:
                return connection.execute(_OWNED_JOB, {"job_id": job_id, "owner_id": owner_id}).first()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    return None  # not reached


async def owned_job_row_async(reads: AsyncEngine, *, job_id: str, owner_id: str) -> Any | None:
    """`owned_job_row` on an asyncio engine (PostgreSQL's reads, api.app.reads_engine): the same SELECT and the
    same one retry on a connection the server has closed, awaited on the event loop."""
    for attempt in (1, 2):
        try:
            async with reads.connect() as connection:
                return (await connection.execute(_OWNED_JOB, {"job_id": job_id, "owner_id": owner_id})).first()
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    return None  # not reached


_JOBS = Job.__table__
# built once: building and hashing the statement per request cost as much as running it (profile, issue 11)
_OWNED_JOB = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.owner_id == bindparam("owner_id"))


def events_page(session: Session, *, job_id: str, after: int, limit: int) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                                .order_by(JobEvent.id).limit(limit)))


def status_of(session: Session, *, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def artifacts(session: Session, *, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def artifact(session: Session, *, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


__all__ = [
    "updated", "transition", "count_in_flight", "Claim", "claim", "heartbeat", "add_event", "stale_cutoff",
    "by_idempotency_key", "create_job", "cancel", "pause", "resume", "delete_finished", "events_page",
    "status_of", "artifacts", "artifact", "owned_job_row",
]

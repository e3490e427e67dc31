"""Job state: every read and write of the jobs and their events, shared by the API, the worker, the reaper and
the metrics (no other package issues SQL on them; tests/test_structure.py checks it).

Every transition is a conditional UPDATE (`... WHERE status IN (...)`), so two processes racing on one job
(an API cancel and a worker finishing, two workers after a redelivery, two reapers) cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Engine, Update, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from service.crud import delete_jobs
from service.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobStatus,
    new_id,
    utcnow,
)

# a worker holds the job (and beats its heartbeat)
_HELD = (JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING)


def updated(session: Session, statement: Update) -> int:
    """Run an UPDATE; the number of rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def transition(session: Session, *, job_id: str, from_statuses: tuple[JobStatus, ...], **values: Any) -> bool:
    """Set `values` on the job if its status is one of `from_statuses`; True if it was."""
    values.setdefault("updated_at", utcnow())
    return (
        updated(session, update(Job).where(Job.id == job_id, Job.status.in_(from_statuses)).values(**values))
        == 1
    )


def count_in_flight(session: Session, *, owner_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES))
        )
        or 0
    )


@dataclass(frozen=True)
class Claim:
    """Outcome of a worker picking up a delivery: run it, or why not."""

    run: bool
    reason: str = ""
    attempts: int = 0


def _silent_since(stale_before: datetime) -> ColumnElement[bool]:
    """The job's worker has not beaten since `stale_before` (or never did)."""
    return (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < stale_before)


def claim(session: Session, *, job_id: str, worker: str, stale_before: datetime, max_attempts: int) -> Claim:
    """Mark a delivered job running for `worker`, unless it is terminal or alive elsewhere.

    A running job whose heartbeat is older than `stale_before` is taken over (its worker died). Each claim
    counts one attempt; beyond `max_attempts` the job fails with `too_many_attempts`.
    """
    now = utcnow()
    claimable = (Job.status == JobStatus.QUEUED) | (
        (Job.status == JobStatus.RUNNING) & _silent_since(stale_before)
    )
    claimed = updated(
        session,
        update(Job)
        .where(Job.id == job_id, claimable)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            updated_at=now,
            started_at=func.coalesce(Job.started_at, now),
        ),
    )
    if claimed != 1:
        job = session.get(Job, job_id)
        session.commit()
        return Claim(False, "missing" if job is None else f"status {job.status}")
    attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
    if attempts > max_attempts:
        transition(
            session,
            job_id=job_id,
            from_statuses=(JobStatus.RUNNING,),
            status=JobStatus.FAILED,
            error_code="too_many_attempts",
            error_message=f"the job was started {attempts - 1} times and its worker died each time "
            f"(limit {max_attempts})",
            finished_at=now,
            worker=None,
        )
        session.commit()
        return Claim(False, "too_many_attempts", attempts)
    session.commit()
    return Claim(True, attempts=attempts)


def heartbeat(session: Session, *, job_id: str, worker: str) -> bool:
    beat = updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status.in_(_HELD))
        .values(heartbeat_at=utcnow()),
    )
    session.commit()
    return beat == 1


def add_event(
    session: Session,
    *,
    job_id: str,
    kind: str,
    stage: str = "",
    step: int = 0,
    total: int = 0,
    eta_s: float | None = None,
    duration_s: float | None = None,
    metrics: dict | None = None,
    message: str = "",
) -> JobEvent:
    row = JobEvent(
        job_id=job_id,
        kind=kind,
        stage=stage,
        step=step,
        total=total,
        eta_s=eta_s,
        duration_s=duration_s,
        metrics=metrics or {},
        message=message,
    )
    session.add(row)
    return row


def stale_cutoff(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


# -- what the worker calls while it runs a job (worker.runner) -----------------------------------------------
def record_start(session: Session, *, job_id: str, attempts: int) -> Job:
    """The job a worker has just claimed (`claim`), after recording that its attempt `attempts` runs.
    COMMITs."""
    job = session.get(Job, job_id)
    assert job is not None
    add_event(session, job_id=job_id, kind="status", message=f"running (attempt {attempts})")
    session.commit()
    return job


_PROGRESS_KINDS = ("progress", "stage_started", "stage_finished")


def record_event(
    session: Session,
    *,
    job_id: str,
    worker: str,
    kind: str,
    stage: str,
    step: int = 0,
    total: int = 0,
    eta_s: float | None = None,
    duration_s: float | None = None,
    metrics: dict[str, Any],
    message: str = "",
) -> None:
    """One engine event of a running job: a job_events row, and on the job's row (only while `worker` holds
    it) the stage, the progress (progress and stage events), the clusters (a clusters event with them) and
    the metrics (a progress event's merged into the job's). `metrics` must be JSON values. COMMITs."""
    add_event(
        session,
        job_id=job_id,
        kind=kind,
        stage=stage,
        step=step,
        total=total,
        eta_s=eta_s,
        duration_s=duration_s,
        metrics=metrics,
        message=message,
    )
    values: dict[str, Any] = {"stage": stage, "updated_at": utcnow()}
    if kind in _PROGRESS_KINDS:
        values["progress"] = {
            "stage": stage,
            "step": step,
            "total_steps": total,
            "eta_s": eta_s,
            "metrics": metrics,
        }
    if kind == "clusters" and "clusters" in metrics:
        values["clusters"] = metrics["clusters"]
    if metrics and kind == "progress":
        values["metrics"] = {**_metrics_of(session, job_id), **metrics}
    session.execute(update(Job).where(Job.id == job_id, Job.worker == worker).values(**values))
    session.commit()


def _metrics_of(session: Session, job_id: str) -> dict[str, Any]:
    return dict(session.scalar(select(Job.metrics).where(Job.id == job_id)) or {})


def stop_wanted(session: Session, *, job_id: str, worker: str) -> bool:
    """True once the job is cancelling or pausing, belongs to another worker, or is gone: the engine should
    stop (the runner's should_stop)."""
    row = session.execute(select(Job.status, Job.worker).where(Job.id == job_id)).one_or_none()
    return row is None or row.status in (JobStatus.CANCELLING, JobStatus.PAUSING) or row.worker != worker


def delivery_moot(session: Session, *, job_id: str) -> str | None:
    """Why no delivery of this job can run it, whichever worker gets it: gone, finished (a cancelled job
    included) or paused (a resume enqueues a new message). None if a claim could take it. Read by the worker
    before it hands a delivery to a child process (worker/delivery.py)."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        return "missing"
    if status in TERMINAL_STATUSES or status == JobStatus.PAUSED:
        return f"status {status}"
    return None


def finish_succeeded(session: Session, *, job_id: str, report: Any, artifacts: list[Artifact]) -> bool:
    """running, cancelling or pausing -> succeeded, with the artifacts' rows and the engine's report in the
    job's metrics, in one transaction. COMMITs; False (rolled back, nothing recorded) if the job was in none
    of those statuses (another worker owns it now)."""
    if not transition(
        session,
        job_id=job_id,
        from_statuses=_HELD,
        status=JobStatus.SUCCEEDED,
        finished_at=utcnow(),
        worker=None,
        error_code=None,
        error_message=None,
    ):
        session.rollback()
        return False
    session.execute(
        update(Job).where(Job.id == job_id).values(metrics={**_metrics_of(session, job_id), "report": report})
    )
    for row in artifacts:
        session.add(row)
    add_event(session, job_id=job_id, kind="status", message="succeeded")
    session.commit()
    return True


def finish_failed(session: Session, *, job_id: str, code: str, message: str) -> bool:
    """running, cancelling or pausing -> failed with the error `code` and `message`. COMMITs; False if the job
    was in none of those statuses."""
    ok = transition(
        session,
        job_id=job_id,
        from_statuses=_HELD,
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message,
        finished_at=utcnow(),
        worker=None,
    )
    if ok:
        add_event(session, job_id=job_id, kind="status", message=f"failed: {code}: {message}")
    session.commit()
    return ok


def finish_paused(session: Session, *, job_id: str) -> bool:
    """pausing -> paused, after the engine stopped at a checkpoint. A clean pause is not a failed attempt: it
    does not count towards max_attempts. COMMITs; False (rolled back) if the job was not pausing."""
    if transition(
        session,
        job_id=job_id,
        from_statuses=(JobStatus.PAUSING,),
        status=JobStatus.PAUSED,
        worker=None,
        heartbeat_at=None,
        attempts=Job.attempts - 1,
    ):
        add_event(session, job_id=job_id, kind="status", message="paused at a checkpoint")
        session.commit()
        return True
    session.rollback()
    return False


def finish_cancelled(session: Session, *, job_id: str) -> bool:
    """cancelling or running -> cancelled, after the engine stopped. COMMITs; False if the job was in neither
    status (another worker owns it now). The caller removes the job's files after this returns True."""
    if not transition(
        session,
        job_id=job_id,
        from_statuses=(JobStatus.CANCELLING, JobStatus.RUNNING),
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
        worker=None,
    ):
        session.commit()
        return False
    add_event(session, job_id=job_id, kind="status", message="cancelled")
    session.commit()
    return True


def requeue(session: Session, *, job_id: str, message: str) -> bool:
    """running -> queued (to be enqueued again by the caller), with `message` as the event. COMMITs; False
    if the job was not running."""
    ok = transition(
        session,
        job_id=job_id,
        from_statuses=(JobStatus.RUNNING,),
        status=JobStatus.QUEUED,
        worker=None,
        enqueued_at=utcnow(),
    )
    if ok:
        add_event(session, job_id=job_id, kind="status", message=message)
    session.commit()
    return ok


# -- what the reaper calls (api.reaper) ----------------------------------------------------------------------
@dataclass
class Reaped:
    """What `reap_stale` did: the jobs put back to queued (the caller enqueues them) and how many it ended."""

    requeued: list[str] = field(default_factory=list)
    cancelled: int = 0
    paused: int = 0
    failed: int = 0


def reap_stale(
    session: Session,
    *,
    stale_before: datetime,
    now: datetime,
    max_attempts: int,
    on_cancelled: Callable[[str], None],
) -> Reaped:
    """End or requeue the jobs whose worker died: running, cancelling or pausing with no heartbeat since
    `stale_before`. cancelling -> cancelled (`on_cancelled(job_id)` then removes its files, before the
    COMMIT); pausing -> paused (its last checkpoint is where a resume continues); running -> failed
    "too_many_attempts" once it has had `max_attempts`, else -> queued. Each UPDATE checks the status and the
    stale heartbeat again, so a job whose worker beat meanwhile is left alone and two reapers cannot both win.
    One transaction; COMMITs."""
    reaped = Reaped()
    dead = session.execute(
        select(Job.id, Job.status, Job.attempts).where(Job.status.in_(_HELD), _silent_since(stale_before))
    ).all()
    for job_id, status, attempts in dead:
        still_dead = _silent_since(stale_before)
        if status == JobStatus.CANCELLING:
            if _guarded(
                session,
                job_id,
                (JobStatus.CANCELLING,),
                still_dead,
                status=JobStatus.CANCELLED,
                finished_at=now,
                worker=None,
            ):
                add_event(session, job_id=job_id, kind="status", message="cancelled (worker gone)")
                on_cancelled(job_id)
                reaped.cancelled += 1
        elif status == JobStatus.PAUSING:
            if _guarded(
                session, job_id, (JobStatus.PAUSING,), still_dead, status=JobStatus.PAUSED, worker=None
            ):
                add_event(session, job_id=job_id, kind="status", message="paused (worker gone)")
                reaped.paused += 1
        elif attempts >= max_attempts:
            if _guarded(
                session,
                job_id,
                (JobStatus.RUNNING,),
                still_dead,
                status=JobStatus.FAILED,
                finished_at=now,
                worker=None,
                error_code="too_many_attempts",
                error_message=f"the worker died during each of {attempts} attempts",
            ):
                reaped.failed += 1
        elif _guarded(
            session,
            job_id,
            (JobStatus.RUNNING,),
            still_dead,
            status=JobStatus.QUEUED,
            worker=None,
            enqueued_at=now,
        ):
            add_event(session, job_id=job_id, kind="status", message="requeued: worker heartbeat lost")
            reaped.requeued.append(job_id)
    session.commit()
    return reaped


def _guarded(
    session: Session,
    job_id: str,
    statuses: tuple[JobStatus, ...],
    condition: ColumnElement[bool],
    **values: Any,
) -> bool:
    """`transition` with one more condition in its WHERE."""
    values.setdefault("updated_at", utcnow())
    return (
        updated(
            session, update(Job).where(Job.id == job_id, Job.status.in_(statuses), condition).values(**values)
        )
        == 1
    )


def queued_since(session: Session, *, before: datetime) -> list[str]:
    """Ids of the queued jobs last enqueued at or before `before`, or never."""
    return list(
        session.scalars(
            select(Job.id).where(
                Job.status == JobStatus.QUEUED, (Job.enqueued_at.is_(None)) | (Job.enqueued_at <= before)
            )
        ).all()
    )


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)) or 0


def mark_enqueued(session: Session, *, job_ids: list[str], now: datetime) -> list[str]:
    """Set `enqueued_at` to `now` on each of these jobs that is still queued (the caller enqueues them again);
    their ids. COMMITs."""
    marked = [
        job_id
        for job_id in job_ids
        if transition(session, job_id=job_id, from_statuses=(JobStatus.QUEUED,), enqueued_at=now)
    ]
    session.commit()
    return marked


# -- what the metrics read (api.metrics) ---------------------------------------------------------------------
def count_by_status(session: Session) -> dict[str, int]:
    """The number of jobs in each status that has any."""
    return {
        status: count
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    }


def stage_durations(session: Session) -> list[tuple[str, int, float | None]]:
    """(stage, how many finished, their total seconds) over the stage_finished events with a duration."""
    return [
        (stage, count, total)
        for stage, count, total in session.execute(
            select(JobEvent.stage, func.count(), func.sum(JobEvent.duration_s))
            .where(JobEvent.kind == "stage_finished", JobEvent.duration_s.is_not(None))
            .group_by(JobEvent.stage)
        ).all()
    ]


# -- what the routes call
# -------------------------------------------------------------------------------------
def by_idempotency_key(session: Session, *, owner_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))


def create_job(
    session: Session,
    *,
    owner_id: str,
    teacher_id: str,
    dataset_id: str,
    calibration_dataset_id: str | None,
    spec: dict[str, Any],
    idempotency_key: str | None,
) -> Job:
    """Insert a queued job and its first event and COMMIT (raises IntegrityError on a concurrent duplicate
    Idempotency-Key, or when the teacher or a dataset was deleted since the caller checked it; the session is
    rolled back then). Enqueue only after this returns."""
    now = utcnow()
    job = Job(
        id=new_id("job"),
        owner_id=owner_id,
        teacher_id=teacher_id,
        dataset_id=dataset_id,
        calibration_dataset_id=calibration_dataset_id,
        teacher_ref=teacher_id,
        dataset_ref=dataset_id,
        calibration_dataset_ref=calibration_dataset_id,
        spec=spec,
        status=JobStatus.QUEUED,
        progress={},
        metrics={},
        attempts=0,
        idempotency_key=idempotency_key,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    add_event(session, job_id=job.id, kind="status", message="queued")
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    return job


def _change(
    session: Session, job: Job, steps: list[tuple[tuple[JobStatus, ...], dict[str, Any], str]]
) -> str | None:
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
    return _change(
        session,
        job,
        [
            (
                (JobStatus.QUEUED, JobStatus.PAUSED),
                {"status": JobStatus.CANCELLED, "finished_at": utcnow()},
                "cancelled before running",
            ),
            ((JobStatus.RUNNING, JobStatus.PAUSING), {"status": JobStatus.CANCELLING}, "cancelling"),
        ],
    )


def pause(session: Session, *, job: Job) -> str | None:
    """queued -> paused at once; running -> pausing (the worker checkpoints and stops at its next check, then
    the job is paused). None if the job cannot be paused (finished, cancelling, already paused)."""
    return _change(
        session,
        job,
        [
            ((JobStatus.QUEUED,), {"status": JobStatus.PAUSED}, "paused before running"),
            ((JobStatus.RUNNING,), {"status": JobStatus.PAUSING}, "pausing"),
        ],
    )


def resume(session: Session, *, job: Job) -> str | None:
    """paused -> queued (the caller enqueues it; it continues from its checkpoint). None if not paused."""
    return _change(
        session,
        job,
        [
            (
                (JobStatus.PAUSED,),
                {"status": JobStatus.QUEUED, "enqueued_at": utcnow(), "worker": None},
                "resumed: queued",
            ),
        ],
    )


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
    /v1/jobs/{id}: a session's transaction cost PostgreSQL a BEGIN and a ROLLBACK round trip, and its close
    ran on the event loop; py-spy, issue 11). `reads` does not ping a connection before use, so a connection
    the database closed (a restart) fails here once; SQLAlchemy then discards the pool's older connections and
    the API runs the read again on a new one (api.dropped_connections, as for every read route)."""
    with reads.connect() as connection:
        return connection.execute(_OWNED_JOB, {"job_id": job_id, "owner_id": owner_id}).first()


async def owned_job_row_async(reads: AsyncEngine, *, job_id: str, owner_id: str) -> Any | None:
    """`owned_job_row` on an asyncio engine (PostgreSQL's reads, api.app.reads_engine): the same SELECT,
    awaited on the event loop."""
    async with reads.connect() as connection:
        return (await connection.execute(_OWNED_JOB, {"job_id": job_id, "owner_id": owner_id})).first()


_JOBS = Job.__table__
# built once: building and hashing the statement per request cost as much as running it (profile, issue 11)
_OWNED_JOB = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.owner_id == bindparam("owner_id"))


def events_page(session: Session, *, job_id: str, after: int, limit: int) -> list[JobEvent]:
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def status_of(session: Session, *, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def artifacts(session: Session, *, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def artifact(session: Session, *, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


__all__ = [
    "updated",
    "transition",
    "count_in_flight",
    "Claim",
    "claim",
    "heartbeat",
    "add_event",
    "stale_cutoff",
    "record_start",
    "record_event",
    "stop_wanted",
    "finish_succeeded",
    "finish_failed",
    "finish_paused",
    "finish_cancelled",
    "delivery_moot",
    "requeue",
    "Reaped",
    "reap_stale",
    "queued_since",
    "count_queued",
    "mark_enqueued",
    "count_by_status",
    "stage_durations",
    "by_idempotency_key",
    "create_job",
    "cancel",
    "pause",
    "resume",
    "delete_finished",
    "events_page",
    "status_of",
    "artifacts",
    "artifact",
    "owned_job_row",
]

"""Job state transitions, shared by the API, the worker and the reaper.

Every transition is a conditional UPDATE (`... WHERE status IN (...)`), so two processes racing on one job
(an API cancel and a worker finishing, two workers after a redelivery, two reapers) cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.models import ACTIVE_STATUSES, Job, JobEvent, utcnow


def transition(session: Session, *, job_id: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
    """Set `values` on the job if its status is one of `from_statuses`; True if it was."""
    values.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_statuses))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


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
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable)
        .values(status="running", attempts=Job.attempts + 1, worker=worker, heartbeat_at=now, updated_at=now,
                started_at=func.coalesce(Job.started_at, now))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
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
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status.in_(("running", "cancelling")))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def add_event(session: Session, *, job_id: str, kind: str, stage: str = "", step: int = 0, total: int = 0,
              eta_s: float | None = None, duration_s: float | None = None, metrics: dict | None = None,
              message: str = "") -> JobEvent:
    row = JobEvent(job_id=job_id, kind=kind, stage=stage, step=step, total=total, eta_s=eta_s,
                   duration_s=duration_s, metrics=metrics or {}, message=message)
    session.add(row)
    return row


def stale_cutoff(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


__all__ = ["transition", "count_in_flight", "Claim", "claim", "heartbeat", "add_event", "stale_cutoff"]

"""Recovering jobs the broker forgot or whose worker died. The database decides; the broker is refilled.

- running, cancelling or pausing with a heartbeat older than `heartbeat_stale_s`: the worker died. Running
  jobs go back to queued and are re-enqueued (they resume from their workdir); cancelling ones end cancelled;
  pausing ones end paused (their last checkpoint is where a resume continues).
- queued for longer than `requeue_queued_after_s` while the broker holds fewer messages than there are
  queued jobs (a broker restart lost them): re-enqueued. A duplicate delivery is harmless: the worker's
  claim (service.jobstore.claim) lets only one delivery run a job.
Runs on API startup and every `reaper_interval_s` in the API process (so it lives in api/); safe to run in
several processes.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.jobstore import add_event, stale_cutoff, transition, updated
from service.models import Job, utcnow
from service.queue import Enqueuer
from service.settings import Settings
from service.storage import LocalStorage

log = logging.getLogger(__name__)


def reap(factory: sessionmaker[Session], enqueuer: Enqueuer, settings: Settings, storage: LocalStorage, *,
         queued_age_s: float | None = None) -> dict[str, int]:
    stale = stale_cutoff(settings.heartbeat_stale_s)
    now = utcnow()
    to_enqueue: list[str] = []
    counts = {"requeued": 0, "cancelled": 0, "paused": 0, "failed": 0, "reenqueued": 0}
    with factory() as session:
        dead = session.execute(
            select(Job.id, Job.status, Job.attempts).where(
                Job.status.in_(("running", "cancelling", "pausing")),
                (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < stale),
            )
        ).all()
        for job_id, status, attempts in dead:
            still_dead = (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < stale)
            if status == "cancelling":
                if _guarded(session, job_id, ("cancelling",), still_dead, status="cancelled", finished_at=now,
                            worker=None):
                    add_event(session, job_id=job_id, kind="status", message="cancelled (worker gone)")
                    storage.remove(storage.job_dir(job_id))
                    counts["cancelled"] += 1
            elif status == "pausing":
                if _guarded(session, job_id, ("pausing",), still_dead, status="paused", worker=None):
                    add_event(session, job_id=job_id, kind="status", message="paused (worker gone)")
                    counts["paused"] += 1
            elif attempts >= settings.max_attempts:
                if _guarded(session, job_id, ("running",), still_dead, status="failed", finished_at=now,
                            worker=None, error_code="too_many_attempts",
                            error_message=f"the worker died during each of {attempts} attempts"):
                    counts["failed"] += 1
            elif _guarded(session, job_id, ("running",), still_dead, status="queued", worker=None,
                          enqueued_at=now):
                add_event(session, job_id=job_id, kind="status", message="requeued: worker heartbeat lost")
                to_enqueue.append(job_id)
                counts["requeued"] += 1
        session.commit()

        age = settings.requeue_queued_after_s if queued_age_s is None else queued_age_s
        old = session.scalars(
            select(Job.id).where(Job.status == "queued", (Job.enqueued_at.is_(None))
                                 | (Job.enqueued_at <= now - timedelta(seconds=age)))
        ).all()
        old = [i for i in old if i not in to_enqueue]
        if old:
            total_queued = session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0
            try:
                depth = enqueuer.depth()
            except Exception as exc:  # broker down: nothing to do until it is back
                log.warning("reaper: broker unreachable (%s)", exc)
                depth = -1
            if depth is not None and (depth < 0 or depth >= total_queued):
                old = []  # broker down, or every queued job still has its message
            for job_id in old:
                if transition(session, job_id=job_id, from_statuses=("queued",), enqueued_at=now):
                    to_enqueue.append(job_id)
                    counts["reenqueued"] += 1
            session.commit()
    for job_id in to_enqueue:
        try:
            enqueuer.enqueue(job_id)
        except Exception as exc:
            log.warning("reaper: could not enqueue %s (%s); will retry", job_id, exc)
    if any(counts.values()):
        log.info("reaper: %s", counts)
    return counts


def _guarded(session: Session, job_id: str, statuses: tuple[str, ...], condition, **values) -> bool:
    values.setdefault("updated_at", utcnow())
    return updated(session, update(Job).where(Job.id == job_id, Job.status.in_(statuses), condition)
                   .values(**values)) == 1


__all__ = ["reap"]

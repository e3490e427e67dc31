"""Recovering jobs the broker forgot or whose worker died. The database decides; the broker is refilled.

- running, cancelling or pausing with a heartbeat older than `heartbeat_stale_s`: the worker died. Running
  jobs go back to queued and are re-enqueued (they resume from their workdir); cancelling ones end cancelled;
  pausing ones end paused (their last checkpoint is where a resume continues).
- queued for longer than `requeue_queued_after_s` while the broker holds fewer messages than there are
  queued jobs (a broker restart lost them): re-enqueued. A duplicate delivery is harmless: the worker's
  claim (service.jobstore.claim) lets only one delivery run a job.
The statements are service.jobstore's (reap_stale, queued_since, count_queued, mark_enqueued); this module
decides when to call them and refills the broker.
Runs on API startup and every `reaper_interval_s` in the API process (so it lives in api/); safe to run in
several processes.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.jobstore import count_queued, mark_enqueued, queued_since, reap_stale, stale_cutoff
from service.models import utcnow
from service.queue import Enqueuer
from service.settings import Settings
from service.storage import LocalStorage

log = logging.getLogger(__name__)


def reap(
    factory: sessionmaker[Session],
    enqueuer: Enqueuer,
    settings: Settings,
    storage: LocalStorage,
    *,
    queued_age_s: float | None = None,
) -> dict[str, int]:
    stale = stale_cutoff(settings.heartbeat_stale_s)
    now = utcnow()
    to_enqueue: list[str] = []
    counts = {"requeued": 0, "cancelled": 0, "paused": 0, "failed": 0, "reenqueued": 0}
    with factory() as session:
        reaped = reap_stale(
            session,
            stale_before=stale,
            now=now,
            max_attempts=settings.max_attempts,
            on_cancelled=lambda job_id: storage.remove(storage.job_dir(job_id)),
        )
        to_enqueue += reaped.requeued
        counts.update(
            requeued=len(reaped.requeued),
            cancelled=reaped.cancelled,
            paused=reaped.paused,
            failed=reaped.failed,
        )

        age = settings.requeue_queued_after_s if queued_age_s is None else queued_age_s
        old = queued_since(session, before=now - timedelta(seconds=age))
        old = [i for i in old if i not in to_enqueue]
        if old:
            total_queued = count_queued(session)
            try:
                depth = enqueuer.depth()
            except Exception as exc:  # broker down: nothing to do until it is back
                log.warning("reaper: broker unreachable (%s)", exc)
                depth = -1
            if depth is not None and (depth < 0 or depth >= total_queued):
                old = []  # broker down, or every queued job still has its message
            marked = mark_enqueued(session, job_ids=old, now=now)
            to_enqueue += marked
            counts["reenqueued"] += len(marked)
    for job_id in to_enqueue:
        try:
            enqueuer.enqueue(job_id)
        except Exception as exc:
            log.warning("reaper: could not enqueue %s (%s); will retry", job_id, exc)
    if any(counts.values()):
        log.info("reaper: %s", counts)
    return counts


__all__ = ["reap"]

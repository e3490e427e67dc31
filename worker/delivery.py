"""Deliveries that cannot run a job are dropped in the worker's main process, before a child is used.

A job cancelled while queued leaves its message on the broker (the database is the source of truth; the
message only carries the id). Handed to the pool, such a message cost a whole child process: with
`worker_max_tasks_per_child=1` the child exits after its one task and Celery's prefork pool starts another,
which took ~0.5 s on the filesystem broker and up to ~5 s on Redis per message (measured: the skipped task
itself ran in 0.04-0.08 s; the rest was the pool replacing its child), so 100 create-then-cancel requests held
a real job back for minutes (issue 22, item 3; bench/cancel_storm.py).

`SkipMootDeliveries` is the task's Celery request class. Celery asks a request whether it was revoked just
before it hands it to the pool (`Request.execute_using_pool`); this one also answers yes when the job's row
says no claim could take it (`service.jobstore.delivery_moot`: gone, finished or paused), and then acks the
message as Celery acks a revoked one. One indexed read per delivery, on a connection that is closed again at
once (NullPool), so the pool's children never inherit one. A failing read lets the delivery through: the
child's claim decides then, as before.

Why not Celery's `revoke()` from the API: it is a broadcast kept in each worker's memory, lost when a worker
restarts, not known to a worker started later (`--without-mingle`), and the filesystem broker of the embedded
mode has no broadcast at all. The row is the record every worker can read.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.worker.request import Request
from celery.worker.state import task_ready
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.db import make_engine, make_sessionmaker
from service.jobstore import delivery_moot
from service.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(url, poolclass=NullPool))


def moot_reason(job_id: object, database_url: str) -> str | None:
    """Why a delivery of `job_id` cannot run, or None (also when the database cannot say)."""
    if not isinstance(job_id, str):
        return None
    try:
        with _sessionmaker(database_url)() as session:
            return delivery_moot(session, job_id=job_id)
    except Exception as exc:  # the child's claim decides instead
        log.warning("job %s: could not read its status before running it: %s", job_id, exc)
        return None


class SkipMootDeliveries(Request):
    """Celery's request, with `revoked()` also true for a job no claim can take (see the module docstring)."""

    def revoked(self) -> bool:
        if super().revoked():
            return True
        settings = getattr(self._app, "skillkd_settings", None) or get_settings()
        reason = moot_reason(self.args[0] if self.args else None, settings.database_url)
        if reason is None:
            return False
        log.info("job %s not run: %s (message dropped before a worker child was used)", self.args[0], reason)
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True
        return True


__all__ = ["SkipMootDeliveries", "moot_reason"]

"""The Celery task: thin, like a web view. It takes a job id, builds the runner, runs it.

Everything that matters (claiming, the engine call, recording the outcome) is in worker.runner.JobRunner,
which is tested without Celery; this module is what the Celery worker imports.
"""

from __future__ import annotations

import logging
import socket
from functools import lru_cache

from celery import shared_task

from service.db import make_engine, make_sessionmaker
from service.engine import load_engine
from service.queue import CeleryEnqueuer
from service.settings import Settings, get_settings
from service.storage import LocalStorage
from worker.celery_app import TASK_NAME
from worker.delivery import SkipMootDeliveries
from worker.runner import JobRunner

log = logging.getLogger(__name__)


@lru_cache
def _sessionmaker(url: str):
    return make_sessionmaker(make_engine(url))


def build_runner(settings: Settings, worker: str, celery_app) -> JobRunner:
    storage = LocalStorage(settings.storage)
    storage.ensure()
    return JobRunner(
        factory=_sessionmaker(settings.database_url),
        storage=storage,
        engine=load_engine(settings),
        enqueuer=CeleryEnqueuer(celery_app),
        settings=settings,
        worker=worker,
    )


@shared_task(name=TASK_NAME, bind=True, ignore_result=True, Request=SkipMootDeliveries)
def run_job(self, job_id: str) -> str:
    settings = getattr(self.app, "skillkd_settings", None) or get_settings()
    worker = f"{self.request.hostname or socket.gethostname()}:{self.request.id}"
    outcome = build_runner(settings, worker, self.app).run(job_id)
    log.info("job %s: %s", job_id, outcome)
    return outcome


__all__ = ["run_job", "build_runner"]

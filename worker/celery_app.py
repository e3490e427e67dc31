"""The Celery app of the worker: one queue `gpu`, one job per worker child, late acks, results ignored.

The broker carries job ids only; the database is the source of truth (see api/reaper.py). The configuration
is `service.queue.celery_config`, the same the API publishes with. `celery -A worker.celery_app worker` and
`skillkd worker` both use `app` (settings from the environment).
"""

from __future__ import annotations

from celery import Celery

from service.queue import QUEUE, TASK_NAME, celery_config
from service.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    if settings.embedded_broker:
        settings.ensure_dirs()
    app = Celery("skillkd", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.skillkd_settings = settings  # type: ignore[attr-defined]
    return app


app = make_celery(get_settings())

__all__ = ["app", "make_celery", "QUEUE", "TASK_NAME"]

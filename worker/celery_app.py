"""The Celery app: one queue `gpu`, one job per worker child, late acks, results ignored.

The broker carries job ids only; the database is the source of truth (see worker/reaper.py).
`celery -A worker.celery_app worker` and `skillkd worker` both use `app` (settings from the environment).
"""

from __future__ import annotations

from celery import Celery

from api.settings import Settings, get_settings

QUEUE = "gpu"
TASK_NAME = "skillkd.run_job"


def make_celery(settings: Settings) -> Celery:
    if settings.embedded_broker:
        settings.ensure_dirs()
    app = Celery("skillkd", include=["worker.tasks"])
    options = settings.broker_transport_options()
    if not settings.embedded_broker:
        options.update(socket_connect_timeout=5, socket_timeout=30)
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        task_acks_late=True,  # a message is acked after the job ends, so a crash redelivers it
        task_reject_on_worker_lost=True,  # a killed child requeues its message
        task_ignore_result=True,
        result_backend=None,
        task_time_limit=settings.task_time_limit_s,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                   "interval_max": 1},
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process (fresh CUDA context) per job
        worker_concurrency=1,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    app.skillkd_settings = settings  # type: ignore[attr-defined]
    return app


app = make_celery(get_settings())

__all__ = ["app", "make_celery", "QUEUE", "TASK_NAME"]

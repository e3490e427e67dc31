"""Putting job ids on the broker: `Enqueuer` and its Celery and in-memory implementations.

The API publishes by task *name* (`send_task`), so it never imports the worker's code; the worker's Celery app
(worker/celery_app.py) registers the task under the same name and uses the same broker configuration
(`celery_config`), so both ends agree on the queue, the routing and the delivery guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from service.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

QUEUE = "gpu"
TASK_NAME = "skillkd.run_job"


class Enqueuer(Protocol):
    def enqueue(self, job_id: str, *, countdown: float = 0) -> None:
        """Publish the job id (after the row is committed)."""
        ...

    def depth(self) -> int | None:
        """Messages waiting in the queue, or None if unknown; raises if the broker is unreachable."""
        ...


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration shared by the producer (API) and the consumer (worker)."""
    options = settings.broker_transport_options()
    if not settings.embedded_broker:
        options.update(socket_connect_timeout=5, socket_timeout=30)
    return dict(
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
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,  # a fresh process (fresh CUDA context) per job
        worker_concurrency=1,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )


def make_producer(settings: Settings) -> Celery:
    """A Celery app that only publishes (no tasks registered): what the API needs."""
    from celery import Celery

    if settings.embedded_broker:
        settings.ensure_dirs()
    app = Celery("skillkd")
    app.conf.update(celery_config(settings))
    return app


class CeleryEnqueuer:
    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryEnqueuer:
        return cls(make_producer(settings))

    def enqueue(self, job_id: str, *, countdown: float = 0) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], queue=QUEUE, countdown=countdown or None)

    def depth(self) -> int | None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=3)
            channel = conn.default_channel
            return int(channel.queue_declare(queue=QUEUE, durable=True, auto_delete=False).message_count)


class MemoryEnqueuer:
    """For tests: remembers what was enqueued; `fail=True` simulates a broker that is down."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.fail = False

    def enqueue(self, job_id: str, *, countdown: float = 0) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.ids.append(job_id)

    def depth(self) -> int | None:
        if self.fail:
            raise ConnectionError("broker down")
        return len(self.ids)

    def pop_all(self) -> list[str]:
        ids, self.ids = self.ids, []
        return ids


__all__ = [
    "Enqueuer",
    "CeleryEnqueuer",
    "MemoryEnqueuer",
    "celery_config",
    "make_producer",
    "QUEUE",
    "TASK_NAME",
]

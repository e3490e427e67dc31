"""Putting job ids on the broker: `Enqueuer` and its Celery and in-memory implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from celery import Celery


class Enqueuer(Protocol):
    def enqueue(self, job_id: str, *, countdown: float = 0) -> None:
        """Publish the job id (after the row is committed)."""
        ...

    def depth(self) -> int | None:
        """Messages waiting in the queue, or None if unknown; raises if the broker is unreachable."""
        ...


class CeleryEnqueuer:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def enqueue(self, job_id: str, *, countdown: float = 0) -> None:
        from worker.celery_app import QUEUE, TASK_NAME

        self.app.send_task(TASK_NAME, args=[job_id], queue=QUEUE, countdown=countdown or None)

    def depth(self) -> int | None:
        from worker.celery_app import QUEUE

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


__all__ = ["Enqueuer", "CeleryEnqueuer", "MemoryEnqueuer"]

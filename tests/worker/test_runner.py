"""JobRunner (the worker minus Celery) on SQLite with the fake engine: claims, outcomes, resume, cancel."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from api.reaper import reap
from core.errors import StopRequested
from service.engine import FakeEngine
from service.models import Job, JobEvent, utcnow


def new_job(client, alice, teacher, dataset, spec=None):
    r = client.post(
        "/v1/jobs",
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec or {}},
        headers=alice,
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def job_row(app, job_id) -> Job:
    with app.state.services.factory() as s:
        return s.get(Job, job_id)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the runner records nothing."""


class CrashingEngine(FakeEngine):
    def __init__(self, crash_at: int, **kw) -> None:
        super().__init__(**kw)
        self.crash_at = crash_at

    def run(self, spec, teacher, audio, workdir, *, on_event=None, should_stop=None, **kw):
        def sink(event):
            on_event(event)
            if event.kind == "progress" and event.stage == "distill_prune" and event.step == self.crash_at:
                raise Crash()

        return super().run(spec, teacher, audio, workdir, on_event=sink, should_stop=should_stop, **kw)


def test_crash_mid_stage_resumes_from_checkpoint(
    client, alice, teacher, dataset, app, make_runner, enqueuer, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    enqueuer.pop_all()
    with contextlib.suppress(Crash):
        make_runner(CrashingEngine(crash_at=3, steps=6), worker="w1").run(job_id)
    assert job_row(app, job_id).status == "running"
    s = app.state.services
    # a redelivery while the heartbeat is fresh is not run twice
    assert make_runner(FakeEngine(steps=6), worker="w2").run(job_id) == "skipped: status running"
    with s.factory() as session:  # the dead worker's heartbeat goes stale
        session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        session.commit()
    assert reap(s.factory, enqueuer, settings, s.storage)["requeued"] == 1
    assert enqueuer.pop_all() == [job_id]
    assert make_runner(FakeEngine(steps=6), worker="w2").run(job_id) == "succeeded"
    job = job_row(app, job_id)
    assert job.status == "succeeded" and job.attempts == 2
    with s.factory() as session:
        steps = session.scalars(
            select(JobEvent.step).where(
                JobEvent.job_id == job_id, JobEvent.kind == "progress", JobEvent.stage == "distill_prune"
            )
        ).all()
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 4: steps 1-3 were not trained again


def test_stale_running_job_is_taken_over_by_a_redelivery(
    client, alice, teacher, dataset, app, make_runner, enqueuer
):
    job_id = new_job(client, alice, teacher, dataset)
    with app.state.services.factory() as session:
        session.execute(
            update(Job).values(
                status="running", attempts=1, worker="dead", heartbeat_at=utcnow() - timedelta(seconds=60)
            )
        )
        session.commit()
    assert make_runner(worker="w2").run(job_id) == "succeeded"
    assert job_row(app, job_id).attempts == 2


def test_too_many_attempts_fails_with_a_clear_code(
    client, alice, teacher, dataset, app, make_runner, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    with app.state.services.factory() as session:
        session.execute(update(Job).values(attempts=settings.max_attempts))
        session.commit()
    assert make_runner().run(job_id) == "skipped: too_many_attempts"
    job = job_row(app, job_id)
    assert job.status == "failed" and job.error_code == "too_many_attempts"


def test_reaper_fails_a_job_whose_workers_keep_dying(
    client, alice, teacher, dataset, app, enqueuer, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    s = app.state.services
    with s.factory() as session:
        session.execute(
            update(Job).values(
                status="running",
                attempts=settings.max_attempts,
                heartbeat_at=utcnow() - timedelta(seconds=60),
            )
        )
        session.commit()
    assert reap(s.factory, enqueuer, settings, s.storage)["failed"] == 1
    assert job_row(app, job_id).error_code == "too_many_attempts"


def test_cancel_while_running_stops_and_removes_files(
    client, alice, teacher, dataset, app, make_runner, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    runner = make_runner(FakeEngine(steps=200, step_s=0.02))
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run(job_id)))
    thread.start()
    deadline = time.monotonic() + 10
    while (job_row(app, job_id).progress or {}).get("step", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert r.json()["status"] == "cancelling"
    thread.join(timeout=20)
    assert outcome == ["cancelled"]
    assert job_row(app, job_id).status == "cancelled"
    assert not (settings.storage / "jobs" / job_id).exists()


def test_reaper_ends_cancelling_jobs_whose_worker_died(
    client, alice, teacher, dataset, app, enqueuer, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    s = app.state.services
    s.storage.job_workdir(job_id).mkdir(parents=True)
    with s.factory() as session:
        session.execute(
            update(Job).values(status="cancelling", heartbeat_at=utcnow() - timedelta(seconds=60))
        )
        session.commit()
    assert reap(s.factory, enqueuer, settings, s.storage)["cancelled"] == 1
    assert job_row(app, job_id).status == "cancelled"
    assert not s.storage.job_dir(job_id).exists()


class FlakyIOEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__(steps=2)
        self.calls = 0

    def run(self, *a, **kw):
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        return super().run(*a, **kw)


def test_io_errors_are_retried_deterministic_errors_are_not(
    client, alice, teacher, dataset, app, make_runner, enqueuer, settings
):
    job_id = new_job(client, alice, teacher, dataset)
    enqueuer.pop_all()
    runner = make_runner(FlakyIOEngine())
    assert runner.run(job_id) == "requeued"
    assert enqueuer.pop_all() == [job_id] and job_row(app, job_id).status == "queued"
    assert runner.run(job_id) == "succeeded"

    job_id = new_job(client, alice, teacher, dataset)
    assert (
        make_runner(FakeEngine(steps=3, fail_code="training_diverged")).run(job_id)
        == "failed: training_diverged"
    )
    assert not settings.storage.joinpath("jobs", job_id, "work").exists()
    job_id = new_job(client, alice, teacher, dataset)
    assert make_runner(FakeEngine(steps=3, fail_code="internal")).run(job_id) == "failed: internal"
    job = job_row(app, job_id)
    assert job.error_code == "internal" and "fake engine bug" not in job.error_message  # logged, not shown


def test_progress_writes_are_throttled(client, alice, teacher, dataset, app, make_runner, settings):
    settings.progress_interval_s = 60.0
    job_id = new_job(client, alice, teacher, dataset)
    assert make_runner(FakeEngine(steps=50)).run(job_id) == "succeeded"
    with app.state.services.factory() as session:
        steps = session.scalars(
            select(JobEvent.step).where(
                JobEvent.job_id == job_id, JobEvent.kind == "progress", JobEvent.stage == "distill_prune"
            )
        ).all()
    assert steps == [50]  # within 60 s of stage_started only the last step of the stage is written


def test_stop_requested_is_the_engines_cancel_signal():
    assert StopRequested.code == "cancelled"

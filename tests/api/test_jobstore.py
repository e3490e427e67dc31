"""service.jobstore's operations for the worker, the reaper and the metrics, on their own: each transition's
guard (which statuses it leaves alone), what it records, and that the statuses are stored as the plain
strings the API shows. On SQLite, and on PostgreSQL when one is reachable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service import jobstore
from service.db import make_engine, make_sessionmaker
from service.models import (
    JOB_STATUSES,
    TERMINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobStatus,
    Owner,
    new_id,
    utcnow,
)

S = JobStatus


@pytest.fixture(params=["sqlite", "postgresql"])
def factory(request) -> sessionmaker[Session]:
    settings = request.getfixturevalue("settings" if request.param == "sqlite" else "postgres_settings")
    engine = make_engine(settings.database_url)
    request.addfinalizer(engine.dispose)
    return make_sessionmaker(engine)


@pytest.fixture
def owner(factory) -> str:
    with factory() as session:
        owner_id = new_id("own")
        session.add(Owner(id=owner_id, name=owner_id))
        session.commit()
    return owner_id


@pytest.fixture
def make_job(factory, owner):
    """A job row in `status` (held by worker w1 with a fresh heartbeat unless told otherwise)."""

    def make(
        status: JobStatus,
        *,
        worker: str | None = "w1",
        beat_s_ago: float | None = 0.0,
        attempts: int = 1,
        enqueued_s_ago: float | None = 0.0,
    ) -> str:
        now = utcnow()
        with factory() as session:
            job = Job(
                id=new_id("job"),
                owner_id=owner,
                teacher_id="tch_x",
                dataset_id="dat_x",
                spec={},
                status=status,
                progress={},
                metrics={"kept": 1},
                attempts=attempts,
                worker=worker,
                heartbeat_at=None if beat_s_ago is None else now - timedelta(seconds=beat_s_ago),
                enqueued_at=None if enqueued_s_ago is None else now - timedelta(seconds=enqueued_s_ago),
                created_at=now,
                updated_at=now,
            )
            session.add(job)
            session.commit()
            return job.id

    return make


def row(factory, job_id: str) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def messages(factory, job_id: str) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(JobEvent.message)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            )
        )


def test_statuses_are_the_plain_strings_of_the_api():
    assert [str(s) for s in JobStatus] == [s.value for s in JobStatus] == list(JOB_STATUSES)
    assert JobStatus.QUEUED == "queued" and f"{JobStatus.PAUSED}" == "paused"
    assert "failed" in TERMINAL_STATUSES and "paused" not in TERMINAL_STATUSES

    class Body(BaseModel):
        status: JobStatus

    # in a schema a status is validated and documented as the Literal it was: plain strings, inline enum
    assert type(Body(status=JobStatus.RUNNING).status) is str and Body(status="running").status == "running"
    assert Body.model_json_schema()["properties"]["status"]["enum"] == list(JOB_STATUSES)
    with pytest.raises(ValueError, match="literal_error"):
        Body(status="nope")


def test_statuses_are_stored_as_their_values(factory, make_job):
    job_id = make_job(S.QUEUED)
    with factory() as session:
        stored = session.execute(select(Job.__table__.c.status).where(Job.id == job_id)).scalar_one()
    assert type(stored) is str and stored == "queued"


def test_record_start_returns_the_job_and_records_the_attempt(factory, make_job):
    job_id = make_job(S.RUNNING)
    with factory() as session:
        assert jobstore.record_start(session, job_id=job_id, attempts=2).id == job_id
    assert messages(factory, job_id) == ["running (attempt 2)"]


def test_record_event_writes_progress_metrics_and_clusters_while_the_worker_holds_the_job(factory, make_job):
    job_id = make_job(S.RUNNING)
    with factory() as session:
        jobstore.record_event(
            session,
            job_id=job_id,
            worker="w1",
            kind="progress",
            stage="distill_prune",
            step=2,
            total=5,
            eta_s=3.0,
            metrics={"loss": 0.5},
        )
        jobstore.record_event(
            session,
            job_id=job_id,
            worker="w1",
            kind="clusters",
            stage="calibrate",
            metrics={"clusters": [[0, 1]]},
        )
    job = row(factory, job_id)
    assert job.metrics == {"kept": 1, "loss": 0.5}  # merged into what the job had
    assert job.progress == {
        "stage": "distill_prune",
        "step": 2,
        "total_steps": 5,
        "eta_s": 3.0,
        "metrics": {"loss": 0.5},
    }  # a clusters event leaves the progress alone
    assert job.clusters == [[0, 1]] and job.stage == "calibrate"
    with factory() as session:  # another worker's event: its row is recorded, the job is not touched
        jobstore.record_event(
            session, job_id=job_id, worker="w2", kind="stage_started", stage="export", metrics={}
        )
        events = select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)
        assert session.scalar(events) == 3
    assert row(factory, job_id).stage == "calibrate"


@pytest.mark.parametrize(
    ("status", "worker", "stop"),
    [
        (S.RUNNING, "w1", False),
        (S.CANCELLING, "w1", True),
        (S.PAUSING, "w1", True),
        (S.RUNNING, "w2", True),
    ],
)
def test_stop_wanted(factory, make_job, status, worker, stop):
    job_id = make_job(status, worker=worker)
    with factory() as session:
        assert jobstore.stop_wanted(session, job_id=job_id, worker="w1") is stop
        assert jobstore.stop_wanted(session, job_id="job_gone", worker="w1") is True


def test_finish_succeeded_records_report_and_artifacts_once(factory, make_job):
    job_id = make_job(S.CANCELLING)  # the cancel came too late: the job still succeeds
    artifact = Artifact(
        job_id=job_id,
        name="model",
        path="jobs/x/model.zip",
        media_type="application/zip",
        sha256="0" * 64,
        size_bytes=1,
    )
    with factory() as session:
        assert jobstore.finish_succeeded(session, job_id=job_id, report={"wer": 0.1}, artifacts=[artifact])
    job = row(factory, job_id)
    assert job.status == "succeeded" and job.worker is None and job.finished_at is not None
    assert job.metrics == {"kept": 1, "report": {"wer": 0.1}}
    again = Artifact(job_id=job_id, name="model2", path="p", media_type="m", sha256="0" * 64, size_bytes=1)
    with factory() as session:  # a second finisher loses and records nothing
        assert not jobstore.finish_succeeded(session, job_id=job_id, report={}, artifacts=[again])
        assert session.scalars(select(Artifact.name).where(Artifact.job_id == job_id)).all() == ["model"]
    assert messages(factory, job_id) == ["succeeded"]


@pytest.mark.parametrize("status", [S.QUEUED, S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_the_worker_cannot_finish_a_job_it_does_not_hold(factory, make_job, status):
    job_id = make_job(status)
    with factory() as session:
        assert not jobstore.finish_succeeded(session, job_id=job_id, report={}, artifacts=[])
        assert not jobstore.finish_failed(session, job_id=job_id, code="internal", message="x")
        assert not jobstore.finish_paused(session, job_id=job_id)
        assert not jobstore.finish_cancelled(session, job_id=job_id)
        assert not jobstore.requeue(session, job_id=job_id, message="requeued")
    assert row(factory, job_id).status == status and messages(factory, job_id) == []


def test_finish_failed_paused_cancelled_and_requeue(factory, make_job):
    failed = make_job(S.PAUSING)
    paused = make_job(S.PAUSING, attempts=2)
    cancelled = make_job(S.RUNNING)  # a stop that was not a pause
    queued = make_job(S.RUNNING)
    with factory() as session:
        assert jobstore.finish_failed(session, job_id=failed, code="training_diverged", message="NaN loss")
        assert jobstore.finish_paused(session, job_id=paused)
        assert not jobstore.finish_paused(session, job_id=cancelled)
        assert jobstore.finish_cancelled(session, job_id=cancelled)
        assert jobstore.requeue(session, job_id=queued, message="requeued after an I/O error (OSError)")
    job = row(factory, failed)
    assert (job.status, job.error_code, job.error_message, job.worker) == (
        "failed",
        "training_diverged",
        "NaN loss",
        None,
    )
    job = row(factory, paused)
    assert (job.status, job.attempts, job.worker, job.heartbeat_at) == ("paused", 1, None, None)
    job = row(factory, cancelled)
    assert job.status == "cancelled" and job.finished_at is not None
    job = row(factory, queued)
    assert job.status == "queued" and job.worker is None
    assert messages(factory, failed) == ["failed: training_diverged: NaN loss"]
    assert messages(factory, paused) == ["paused at a checkpoint"]
    assert messages(factory, cancelled) == ["cancelled"]
    assert messages(factory, queued) == ["requeued after an I/O error (OSError)"]


def test_reap_stale_ends_or_requeues_only_jobs_whose_worker_died(factory, make_job):
    running = make_job(S.RUNNING, beat_s_ago=60)
    exhausted = make_job(S.RUNNING, beat_s_ago=60, attempts=3)
    cancelling = make_job(S.CANCELLING, beat_s_ago=None)
    pausing = make_job(S.PAUSING, beat_s_ago=60)
    alive = make_job(S.RUNNING, beat_s_ago=0)
    queued = make_job(S.QUEUED, beat_s_ago=60)
    removed: list[str] = []
    now = utcnow()
    with factory() as session:
        reaped = jobstore.reap_stale(
            session,
            stale_before=now - timedelta(seconds=30),
            now=now,
            max_attempts=3,
            on_cancelled=removed.append,
        )
    assert reaped == jobstore.Reaped(requeued=[running], cancelled=1, paused=1, failed=1)
    assert removed == [cancelling]
    statuses = {
        job_id: row(factory, job_id).status
        for job_id in (running, exhausted, cancelling, pausing, alive, queued)
    }
    assert statuses == {
        running: "queued",
        exhausted: "failed",
        cancelling: "cancelled",
        pausing: "paused",
        alive: "running",
        queued: "queued",
    }
    assert row(factory, exhausted).error_code == "too_many_attempts"
    assert messages(factory, running) == ["requeued: worker heartbeat lost"]
    with factory() as session:  # a second reaper finds nothing left to do
        again = jobstore.reap_stale(
            session,
            stale_before=utcnow() - timedelta(seconds=30),
            now=utcnow(),
            max_attempts=3,
            on_cancelled=removed.append,
        )
    assert again == jobstore.Reaped() and removed == [cancelling]


def test_queued_since_count_queued_and_mark_enqueued(factory, make_job):
    old = make_job(S.QUEUED, worker=None, enqueued_s_ago=600)
    never = make_job(S.QUEUED, worker=None, enqueued_s_ago=None)
    young = make_job(S.QUEUED, worker=None, enqueued_s_ago=0)
    make_job(S.PAUSED, worker=None, enqueued_s_ago=600)
    now = utcnow()
    with factory() as session:
        old_ones = jobstore.queued_since(session, before=now - timedelta(seconds=60))
        assert sorted(old_ones) == sorted([old, never])
        assert jobstore.count_queued(session) == 3
        session.commit()
    with factory() as session:  # a job cancelled meanwhile is not marked (nor enqueued by the caller)
        assert jobstore.cancel(session, job=session.get(Job, never)) == "cancelled"
    with factory() as session:
        assert jobstore.mark_enqueued(session, job_ids=[old, never, young], now=now) == [old, young]
    assert row(factory, old).enqueued_at == now


def test_count_by_status_and_stage_durations(factory, make_job):
    for status in (S.QUEUED, S.QUEUED, S.FAILED):
        make_job(status)
    job_id = make_job(S.RUNNING)
    with factory() as session:
        for duration in (1.5, 2.5, None):
            jobstore.add_event(
                session, job_id=job_id, kind="stage_finished", stage="calibrate", duration_s=duration
            )
        jobstore.add_event(session, job_id=job_id, kind="stage_started", stage="export", duration_s=9.0)
        session.commit()
        assert jobstore.count_by_status(session) == {"queued": 2, "failed": 1, "running": 1}
        assert jobstore.stage_durations(session) == [("calibrate", 2, 4.0)]

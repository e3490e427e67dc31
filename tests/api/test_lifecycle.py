"""Issue 11 §3: pausing and resuming jobs (API, worker, CLI); deleting inputs from the CLI (the API side is in
test_deletion.py)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from service.engine import FakeEngine
from service.models import Job, JobEvent


def create(client, headers, teacher, dataset, spec=None):
    return client.post(
        "/v1/jobs",
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec or {"stage1_steps": 3}},
        headers=headers,
    )


def test_pause_queued_is_immediate_resume_requeues(client, alice, teacher, dataset, enqueuer, drain):
    job = create(client, alice, teacher, dataset).json()
    enqueuer.pop_all()
    r = client.post(f"/v1/jobs/{job['id']}/pause", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert drain() == []  # nothing on the queue; a stale delivery would be skipped anyway
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).json()["status"] == "queued"
    assert enqueuer.ids == [job["id"]]
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).status_code == 409
    assert drain() == ["succeeded"]
    r = client.post(f"/v1/jobs/{job['id']}/pause", headers=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_pausable"


class PausedMidway(FakeEngine):
    """Asks the API to pause the job it runs at stage-1 step `at` (as a user would, from outside)."""

    def __init__(self, client, headers, at: int, **kw) -> None:
        super().__init__(**kw)
        self.client, self.headers, self.at = client, headers, at
        self.job_id = ""

    def run(self, spec, teacher, audio, workdir, *, on_event=None, should_stop=None, **kw):
        def event(e):
            if e.kind == "progress" and e.stage == "distill_prune" and e.step == self.at and self.job_id:
                assert (
                    self.client.post(f"/v1/jobs/{self.job_id}/pause", headers=self.headers).json()["status"]
                    == "pausing"
                )
            if on_event:
                on_event(e)

        return super().run(spec, teacher, audio, workdir, on_event=event, should_stop=should_stop, **kw)


def test_pause_running_stops_at_a_checkpoint_and_resume_continues(
    client, alice, teacher, dataset, enqueuer, make_runner, settings, app
):
    job = create(client, alice, teacher, dataset).json()
    enqueuer.pop_all()
    engine = PausedMidway(client, alice, at=3, steps=8)
    engine.job_id = job["id"]
    assert make_runner(engine).run(job["id"]) == "paused"
    body = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert body["status"] == "paused" and body["progress"]["step"] == 3
    workdir = settings.storage / "jobs" / job["id"] / "work"
    assert (
        json.loads((workdir / "fake_state.json").read_text())["step"]["distill_prune"] == 3
    )  # the checkpoint
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).json()["status"] == "queued"
    assert enqueuer.pop_all() == [job["id"]]
    assert make_runner(FakeEngine(steps=8)).run(job["id"]) == "succeeded"
    with app.state.services.factory() as session:
        steps = session.scalars(
            select(JobEvent.step).where(
                JobEvent.job_id == job["id"], JobEvent.kind == "progress", JobEvent.stage == "distill_prune"
            )
        ).all()
        assert session.get(Job, job["id"]).attempts == 1  # a clean pause is not a failed attempt
    assert steps == list(range(1, 9))  # continued at 4: no step ran twice


def test_cancel_a_paused_job_removes_its_checkpoint(
    client, alice, teacher, dataset, enqueuer, make_runner, settings
):
    job = create(client, alice, teacher, dataset).json()
    engine = PausedMidway(client, alice, at=2, steps=6)
    engine.job_id = job["id"]
    assert make_runner(engine).run(job["id"]) == "paused"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()["status"] == "cancelled"
    assert not (settings.storage / "jobs" / job["id"]).exists()


def test_cli_pause_resume_and_delete(cli_as_alice, client, alice, teacher, dataset, enqueuer):
    """The client commands against the in-process app (the TestClient's transport)."""
    from cli import skillkd

    job = create(client, alice, teacher, dataset).json()
    cli, runner = skillkd, CliRunner()
    result = runner.invoke(cli, ["pause", job["id"]])
    assert result.output.strip() == "paused", (result.output, result.exception)
    result = runner.invoke(cli, ["teachers", "delete", teacher["id"]])  # a paused job still needs it
    assert result.exit_code != 0 and "used by unfinished job" in result.output, result.output
    assert runner.invoke(cli, ["resume", job["id"]]).output.strip() == "queued"
    assert runner.invoke(cli, ["cancel", job["id"]]).output.strip() == "cancelled"
    result = runner.invoke(cli, ["teachers", "delete", teacher["id"]])
    assert result.exit_code == 0 and f"deleted teacher {teacher['id']}" in result.output
    assert teacher["id"] not in runner.invoke(cli, ["teachers", "list"]).output
    assert dataset["id"] in runner.invoke(cli, ["datasets", "list"]).output

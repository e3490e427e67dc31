"""Issue 11 §3: deleting teachers and datasets. 409 while an unfinished job (queued, running, pausing, paused,
cancelling) uses one; once only finished jobs do, its row and files go and those jobs stay readable, with the
input's id. On SQLite and on PostgreSQL (the `services` mark; skipped when it is not reachable)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service import crud, jobstore
from service.db import upgrade
from service.models import Job, Teacher
from tests.utils.servicefixtures import small_settings
from tests.utils.servicekit import make_audio, zip_dir


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def settings(request, tmp_path):
    """The shared fixtures (app, client, keys, teacher, dataset, drain) on either database."""
    if request.param == "sqlite":
        s = small_settings(tmp_path / "home")
        upgrade(s.database_url)
        yield s
        return
    yield request.getfixturevalue("postgres_settings")


def create(client, headers, teacher, dataset, **extra):
    r = client.post(
        "/v1/jobs",
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": {"stage1_steps": 3}, **extra},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    return r.json()


def second_dataset(client, headers, tmp_path) -> dict:
    """Another dataset: different content (an upload of the same bytes is the same dataset)."""
    r = client.post(
        "/v1/datasets",
        content=zip_dir(make_audio(tmp_path / "calibration", n=4)),
        headers={**headers, "Content-Type": "application/zip"},
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_inputs_of_finished_jobs_are_deleted_and_the_jobs_stay_readable(
    client, alice, keys, teacher, dataset, drain, settings, tmp_path
):
    calibration = second_dataset(client, alice, tmp_path)
    dirs = [
        settings.storage / "teachers" / teacher["id"],
        settings.storage / "datasets" / dataset["id"],
        settings.storage / "datasets" / calibration["id"],
    ]
    assert all(d.is_dir() for d in dirs)
    job = create(client, alice, teacher, dataset, calibration_dataset_id=calibration["id"])
    cancelled = create(client, alice, teacher, dataset)
    assert client.post(f"/v1/jobs/{cancelled['id']}/cancel", headers=alice).json()["status"] == "cancelled"
    assert drain() == ["succeeded", "skipped: status cancelled"]
    assert client.delete(f"/v1/teachers/{teacher['id']}", headers=keys["bob"]).status_code == 404

    inputs = (("teachers", teacher["id"]), ("datasets", dataset["id"]), ("datasets", calibration["id"]))
    for kind, rid in inputs:
        r = client.delete(f"/v1/{kind}/{rid}", headers=alice)
        assert r.status_code == 204, r.text
        assert client.get(f"/v1/{kind}/{rid}", headers=alice).status_code == 404
        assert client.delete(f"/v1/{kind}/{rid}", headers=alice).status_code == 404
    assert not any(d.exists() for d in dirs)

    body = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()  # it still says where it came from
    assert body["status"] == "succeeded"
    assert (body["teacher_id"], body["dataset_id"], body["calibration_dataset_id"]) == (
        teacher["id"],
        dataset["id"],
        calibration["id"],
    )
    listed = {j["id"] for j in client.get("/v1/jobs", headers=alice).json()["items"]}
    assert listed == {job["id"], cancelled["id"]}
    report = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=alice)
    assert report.status_code == 200 and report.content
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204


def test_an_unfinished_job_keeps_its_inputs(
    client, alice, teacher, dataset, drain, enqueuer, settings, tmp_path
):
    """Queued and paused (a paused job resumes from its checkpoint with the same teacher and audio) block the
    deletion of the teacher, the dataset and the calibration dataset; once the job has finished they go."""
    calibration = second_dataset(client, alice, tmp_path)
    job = create(client, alice, teacher, dataset, calibration_dataset_id=calibration["id"])
    enqueuer.pop_all()  # the delivery of the queued job; resume enqueues it again
    inputs = (
        ("teachers", teacher["id"], "teacher_in_use"),
        ("datasets", dataset["id"], "dataset_in_use"),
        ("datasets", calibration["id"], "dataset_in_use"),
    )
    for status in ("queued", "paused"):
        if status == "paused":
            assert client.post(f"/v1/jobs/{job['id']}/pause", headers=alice).json()["status"] == "paused"
        for kind, rid, code in inputs:
            r = client.delete(f"/v1/{kind}/{rid}", headers=alice)
            assert r.status_code == 409, (status, r.text)
            assert r.json()["error"]["code"] == code and job["id"] in r.json()["error"]["message"]
            assert client.get(f"/v1/{kind}/{rid}", headers=alice).status_code == 200
    assert (settings.storage / "teachers" / teacher["id"]).is_dir()
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=alice).json()["status"] == "queued"
    assert drain() == ["succeeded"]  # it found its inputs
    for kind, rid, _ in inputs:
        assert client.delete(f"/v1/{kind}/{rid}", headers=alice).status_code == 204


def test_a_job_created_on_an_input_deleted_meanwhile_is_refused(
    client, alice, teacher, dataset, app, enqueuer, monkeypatch
):
    """The route checks the teacher, then inserts the job; a deletion in between is caught by the job's
    foreign key (the deletion commits first, the insert fails): 422 teacher_not_found, no job enqueued."""
    real_create = jobstore.create_job

    def create_after_a_deletion(session, **kw):
        with app.state.services.factory() as other:
            assert crud.delete_resource(other, model=Teacher, row_id=teacher["id"]) == []
        return real_create(session, **kw)

    monkeypatch.setattr(jobstore, "create_job", create_after_a_deletion)
    body = {"teacher_id": teacher["id"], "dataset_id": dataset["id"]}
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_not_found", r.text
    with app.state.services.factory() as session:
        assert session.scalars(select(Job.id)).all() == []
    assert enqueuer.ids == []

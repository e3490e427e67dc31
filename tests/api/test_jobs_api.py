"""/v1/jobs: creation, validation, idempotency, limits, pagination, isolation, events, cancel, artifacts."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.engine import FakeEngine


def create(client, headers, teacher, dataset, spec=None, **extra_headers):
    return client.post(
        "/v1/jobs",
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec or {"stage1_steps": 3}},
        headers={**headers, **extra_headers},
    )


def test_create_job_is_202_queued_and_enqueued_after_commit(client, alice, teacher, dataset, enqueuer, app):
    r = create(client, alice, teacher, dataset)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["error"] is None
    assert job["spec"]["stage1_steps"] == 3 and job["spec"]["method"] == "skill"
    assert enqueuer.ids == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "queued"


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"sparsity": 1.5}, "body.spec.sparsity"),
        ({"preset": "huge"}, "body.spec.preset"),
        ({"clusters": 0}, "body.spec.clusters"),
        ({"unknown_knob": 1}, "body.spec.unknown_knob"),
        ({"device": "tpu"}, "body.spec.device"),
        ({"sparsity": 0.5, "target_params": 100}, "body.spec"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(client, alice, teacher, dataset, enqueuer, spec, field):
    r = create(client, alice, teacher, dataset, spec)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert any(f.startswith(field) for f in err["fields"]), err
    assert field in err["message"]
    assert enqueuer.ids == []


def test_spec_checked_against_the_teacher(client, alice, teacher, dataset):
    r = create(client, alice, teacher, dataset, {"target_params": 10**9})
    assert r.status_code == 422 and r.json()["error"]["code"] == "spec_invalid"
    assert "spec.target_params" in r.json()["error"]["message"]
    r = create(client, alice, teacher, dataset, {"clusters": [[0], [99]]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "spec_invalid"
    assert r.json()["error"]["message"].startswith("spec.clusters: clusters[1]: index 99 out of range")
    # core.rules at creation, as the pipeline would refuse it later: one weight per cluster (4 by default)
    r = create(client, alice, teacher, dataset, {"target_weights": [1, 2]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "spec_invalid"
    assert "spec.target_weights" in r.json()["error"]["message"]
    assert create(client, alice, teacher, dataset, {"target_weights": [1, 2, 3, 4]}).status_code == 202


def test_unknown_or_foreign_references_are_422(client, keys, teacher, dataset):
    r = create(client, keys["bob"], teacher, dataset)
    assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_not_found"
    r = client.post(
        "/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": "ds_" + "0" * 28}, headers=keys["alice"]
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "dataset_not_found"
    r = client.post(
        "/v1/jobs", json={"teacher_id": "../../etc", "dataset_id": dataset["id"]}, headers=keys["alice"]
    )
    assert r.status_code == 422 and "body.teacher_id" in r.json()["error"]["message"]


def test_idempotency_key_returns_the_same_job(client, alice, keys, teacher, dataset, enqueuer):
    first = create(client, alice, teacher, dataset, **{"Idempotency-Key": "abc-1"})
    again = create(client, alice, teacher, dataset, **{"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert enqueuer.ids == [first.json()["id"]]
    other = create(client, alice, teacher, dataset, {"stage1_steps": 4}, **{"Idempotency-Key": "abc-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert (
        create(client, alice, teacher, dataset, **{"Idempotency-Key": "abc-2"}).json()["id"]
        != first.json()["id"]
    )


def test_jobs_in_flight_limit_is_429(client, alice, teacher, dataset, settings):
    for _ in range(settings.max_jobs_in_flight):
        assert create(client, alice, teacher, dataset).status_code == 202
    r = create(client, alice, teacher, dataset)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"


def test_cursor_pagination_and_status_filter(client, alice, teacher, dataset, app, settings):
    settings.max_jobs_in_flight = 100
    ids = [create(client, alice, teacher, dataset).json()["id"] for _ in range(7)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice)
    seen, after = [], None
    while True:
        params = {"limit": 3, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", params=params, headers=alice).json()
        seen += [j["id"] for j in page["items"]]
        after = page["next_cursor"]
        if not after:
            break
    assert seen == list(reversed(ids))
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=alice).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}, headers=alice).status_code == 422


def test_owner_isolation_is_404(client, keys, teacher, dataset, drain):
    job = create(client, keys["alice"], teacher, dataset).json()
    drain()
    for method, path in [
        ("get", ""),
        ("get", "/events"),
        ("post", "/cancel"),
        ("delete", ""),
        ("get", "/artifacts"),
        ("get", "/artifacts/report.json"),
    ]:
        r = client.request(method.upper(), f"/v1/jobs/{job['id']}{path}", headers=keys["bob"])
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/jobs", headers=keys["bob"]).json()["items"] == []


def test_cancel_queued_is_immediate_and_delete_needs_terminal(client, alice, teacher, dataset, drain):
    job = create(client, alice, teacher, dataset).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert drain() == ["skipped: status cancelled"]
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    active = create(client, alice, teacher, dataset).json()
    r = client.delete(f"/v1/jobs/{active['id']}", headers=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_active"
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).status_code == 404


def test_succeeded_job_progress_events_and_artifacts(client, alice, teacher, dataset, drain, settings):
    job = create(client, alice, teacher, dataset).json()
    assert drain() == ["succeeded"]
    body = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert body["status"] == "succeeded" and body["attempts"] == 1
    assert body["clusters"] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert body["progress"]["stage"] == "export"
    assert "loss" in body["metrics"] and body["metrics"]["report"]["fake"] is True

    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 5}, headers=alice).json()
    assert len(events["items"]) == 5 and events["next_cursor"] == events["items"][-1]["id"]
    rest = client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": events["next_cursor"], "limit": 1000}, headers=alice
    ).json()
    kinds = [e["kind"] for e in events["items"] + rest["items"]]
    assert kinds[0] == "status" and kinds[-1] == "status"
    assert {"stage_started", "progress", "stage_finished", "clusters"} <= set(kinds)
    finished = [e for e in rest["items"] + events["items"] if e["kind"] == "stage_finished"]
    assert all(e["duration_s"] is not None for e in finished)

    names = {
        a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts", headers=alice).json()["items"]
    }
    assert set(names) == {"model", "report.json", "cka.png", "clusters.json", "train_log"}
    r = client.get(names["model"]["url"], headers=alice)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    # what a download is saved as: listed, and the same in Content-Disposition (the dashboard uses it)
    assert names["model"]["filename"] == "model.zip" and names["train_log"]["filename"] == "train_log.jsonl"
    assert r.headers["content-disposition"] == 'attachment; filename="model.zip"'
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"] == names["model"]["sha256"]
    assert r.headers["etag"] == f'"{names["model"]["sha256"]}"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert "export/model.safetensors" in zf.namelist()
    part = client.get(names["model"]["url"], headers={**alice, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == r.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(r.content)}"
    cached = client.get(names["model"]["url"], headers={**alice, "If-None-Match": r.headers["etag"]})
    assert cached.status_code == 304
    report = client.get(names["report.json"]["url"], headers=alice).json()
    assert report["fake"] is True
    # checkpoints are gone, artifacts stay; DELETE removes everything
    assert not (settings.storage / "jobs" / job["id"] / "work").exists()
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    assert not (settings.storage / "jobs" / job["id"]).exists()


def test_server_sent_events_stream_until_the_end(client, alice, teacher, dataset, drain):
    job = create(client, alice, teacher, dataset).json()
    drain()
    with client.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={**alice, "Accept": "text/event-stream"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[-1].startswith("event: end")
    assert json.loads(blocks[-1].split("data: ", 1)[1]) == {"status": "succeeded"}
    ids = [int(b.split("\n")[0][4:]) for b in blocks[:-1]]
    assert ids == sorted(ids) and len(ids) > 5
    # resuming with Last-Event-ID skips what was seen
    with client.stream(
        "GET",
        f"/v1/jobs/{job['id']}/events",
        headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": str(ids[-2])},
    ) as r:
        again = [b for b in "".join(r.iter_text()).split("\n\n") if b.strip()]
    assert len(again) == 2


def test_failed_job_reports_its_code(client, alice, teacher, dataset, drain):
    from service.engine import FakeEngine

    job = create(client, alice, teacher, dataset).json()
    assert drain(FakeEngine(steps=3, fail_code="training_diverged")) == ["failed: training_diverged"]
    body = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "training_diverged" and "nan" in body["error"]["message"]


def test_health_ready_metrics(app, client, alice, teacher, dataset, drain, enqueuer):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    app.state.engine_warmer.join(10)
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok", "engine": "ok"}
    create(client, alice, teacher, dataset)
    drain()
    create(client, alice, teacher, dataset)
    text = client.get("/metrics").text
    assert 'skillkd_jobs{status="succeeded"} 1.0' in text
    assert 'skillkd_jobs{status="queued"} 1.0' in text
    assert "skillkd_queue_depth 1.0" in text
    assert 'skillkd_stage_duration_seconds_count{stage="distill_prune"} 1.0' in text
    assert 'skillkd_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    enqueuer.fail = True
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")


def test_enqueue_failure_keeps_the_job_queued_for_the_reaper(client, alice, teacher, dataset, enqueuer, app):
    from api.reaper import reap

    enqueuer.fail = True
    job = create(client, alice, teacher, dataset).json()
    assert job["status"] == "queued"
    enqueuer.fail = False
    s = app.state.services
    counts = reap(s.factory, enqueuer, s.settings, s.storage, queued_age_s=0)
    assert counts["reenqueued"] == 1 and enqueuer.ids == [job["id"]]
    # the queue now holds as many messages as queued jobs: nothing more to do
    assert reap(s.factory, enqueuer, s.settings, s.storage, queued_age_s=0)["reenqueued"] == 0


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert "/v1/jobs/{job_id}/artifacts/{name}" in paths
    assert "application/zip" in paths["/v1/teachers"]["post"]["requestBody"]["content"]
    assert "CompressionSpec" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


class _SlowEngine(FakeEngine):
    """An engine whose imports take until `done` is set (torch on a busy machine)."""

    def __init__(self) -> None:
        super().__init__(steps=3)
        self.done = threading.Event()

    def warm(self) -> None:
        assert self.done.wait(10)


def test_readyz_waits_for_the_engine_loaded_at_startup(settings, enqueuer):
    """The engine (torch) loads in the background at startup, not in the first job creation: /healthz answers
    at once, /readyz is 503 naming the engine until it is loaded; an engine that cannot load is named too."""
    engine = _SlowEngine()
    app = create_app(settings, enqueuer=enqueuer, engine=engine, run_reaper=False)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["engine"].startswith("loading")
        engine.done.set()
        app.state.engine_warmer.join(10)
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["engine"] == "ok"
    broken = settings.model_copy(update={"engine": "service.engine:NoSuchEngine"})
    app = create_app(broken, enqueuer=enqueuer, run_reaper=False)
    with TestClient(app) as c:
        app.state.engine_warmer.join(10)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["engine"].startswith("error: AttributeError")
    off = settings.model_copy(update={"warm_engine": False})
    with TestClient(create_app(off, enqueuer=enqueuer, engine=engine, run_reaper=False)) as c:
        assert "engine" not in c.get("/readyz").json()["checks"]

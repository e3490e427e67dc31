"""POST /v1/jobs?dry_run=true: the job's checks, then the engine's estimate; nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db import upgrade
from service.engine import CoreEngine
from service.queue import MemoryEnqueuer
from tests.utils.models import save_tiny_teacher
from tests.utils.servicefixtures import small_settings
from tests.utils.servicekit import make_audio, zip_dir


def dry_run(client, headers, teacher, dataset, spec):
    return client.post(
        "/v1/jobs?dry_run=true",
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec},
        headers=headers,
    )


def test_dry_run_creates_nothing(client, alice, teacher, dataset, enqueuer, settings):
    r = dry_run(client, alice, teacher, dataset, {"stage1_steps": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["dry_run"] is True and body["teacher_id"] == teacher["id"] and body["work"]["stage1_steps"] == 3
    )
    assert "estimated_seconds" in body
    assert enqueuer.ids == [] and client.get("/v1/jobs", headers=alice).json()["items"] == []
    assert not (settings.storage / "jobs").exists() or not list((settings.storage / "jobs").iterdir())


def test_dry_run_refuses_what_a_job_creation_refuses(client, alice, keys, teacher, dataset):
    for spec, code in (
        ({"target_params": 10**9}, "spec_invalid"),
        ({"clusters": [[0], [99]]}, "spec_invalid"),
        ({"stage1_steps": 10**9}, "spec_invalid"),
    ):
        dry = dry_run(client, alice, teacher, dataset, spec)
        real = client.post(
            "/v1/jobs",
            json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec},
            headers=alice,
        )
        assert dry.status_code == real.status_code == 422
        assert dry.json()["error"] == real.json()["error"] and dry.json()["error"]["code"] == code
    other = dry_run(client, keys["bob"], teacher, dataset, {})
    assert other.status_code == 422 and other.json()["error"]["code"] == "teacher_not_found"


@pytest.mark.slow
def test_dry_run_with_the_real_engine(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "home", engine="service.engine:CoreEngine")
    upgrade(settings.database_url)
    enqueuer = MemoryEnqueuer()
    app = create_app(settings, enqueuer=enqueuer, engine=CoreEngine(), run_reaper=False)
    from service.keys import create_key

    with TestClient(app) as client:
        with app.state.services.factory() as session:
            alice = {"Authorization": f"Bearer {create_key(session, owner_name='alice').key}"}
            session.commit()
        teacher_zip = zip_dir(save_tiny_teacher(tmp_path / "teacher"))
        teacher = client.post(
            "/v1/teachers", content=teacher_zip, headers={**alice, "Content-Type": "application/zip"}
        ).json()
        audio_zip = zip_dir(make_audio(tmp_path / "audio", n=4, seconds=1.5))
        dataset = client.post(
            "/v1/datasets", content=audio_zip, headers={**alice, "Content-Type": "application/zip"}
        ).json()
        spec = {"stage1_steps": 4, "stage2_steps": 2, "batch_seconds": 2.0}
        r = dry_run(client, alice, teacher, dataset, spec)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["teacher"]["num_params"] == teacher["num_params"] and "path" not in body["teacher"]
        assert body["work"]["stage1_steps"] == 4 and body["estimated_seconds"]["total"] > 0
        assert body["student_estimate"]["uniform"]["num_params"] <= 0.25 * teacher["num_params"]
        assert str(settings.storage) not in r.text
        assert enqueuer.ids == [] and client.get("/v1/jobs", headers=alice).json()["items"] == []
        too_short = dry_run(
            client, alice, teacher, dataset, {**spec, "preset": "paper", "batch_seconds": None}
        )
        assert too_short.status_code == 422 and too_short.json()["error"]["code"] == "audio_invalid"


def test_cli_submit_dry_run(cli_as_alice, client, alice, enqueuer, tmp_path):
    """`skillkd submit --dry-run` against the in-process app (the TestClient's transport): the estimate as
    JSON."""
    import json

    from click.testing import CliRunner

    from cli import skillkd
    from tests.utils.servicekit import make_teacher

    teacher, audio = make_teacher(tmp_path / "teacher"), make_audio(tmp_path / "audio")
    result = CliRunner().invoke(
        skillkd, ["submit", str(teacher), str(audio), "--stage1-steps", "5", "--dry-run"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    estimate = json.loads(result.stdout)
    assert estimate["dry_run"] is True and "stage1_steps" in estimate["work"]  # (the fake engine's own steps)
    assert enqueuer.ids == [] and client.get("/v1/jobs").json()["items"] == []

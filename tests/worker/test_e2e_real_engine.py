"""End to end with the real engine (core.pipeline) on the demo teacher and audio. Marked slow; skipped
until core.pipeline / core.models / core.data / core.export exist.

- distributed: HTTP uploads, a real Celery worker on Redis with PostgreSQL, poll to success, download and
  load the student, check its parameter count;
- embedded: `skillkd serve` + `skillkd submit --wait`, then the same checks;
- reliability: SIGKILL the worker mid stage 1, restart it, the job resumes and succeeds.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from test_worker_processes import create_job, get, progress_steps, wait_terminal

from tests.utils.servicekit import DEMO_AUDIO, DEMO_TEACHER, make_audio, wait_for, zip_dir

pytestmark = pytest.mark.slow

SPEC = {"preset": "quick", "stage1_steps": 6, "stage2_steps": 3, "batch_seconds": 4}


@pytest.fixture(autouse=True)
def _engine_present():
    for module in ("core.pipeline", "core.models", "core.data", "core.export"):
        pytest.importorskip(module, reason="the engine has not landed yet")


def real_engine(stack):
    stack.settings.engine = "service.engine:CoreEngine"
    stack.settings.heartbeat_stale_s = 20.0
    stack.settings.max_upload_bytes = 512 * 1024 * 1024
    stack.settings.max_extracted_bytes = 1024 * 1024 * 1024
    stack.fake = {}


def load_student_params(archive: Path, tmp: Path) -> int:
    from core.models import load_student

    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp / "student")
    model_dir = next(p.parent for p in (tmp / "student").rglob("config.json"))
    return int(load_student(model_dir).num_params())


def upload_demo(client, stack):
    t = client.post("/v1/teachers", content=zip_dir(DEMO_TEACHER), headers=stack.headers)
    d = client.post("/v1/datasets", content=zip_dir(DEMO_AUDIO), headers=stack.headers)
    assert t.status_code == 201 and d.status_code == 201, (t.text, d.text)
    return t.json(), d.json()


def download(client, stack, job_id, name, dest: Path) -> Path:
    r = client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=stack.headers)
    assert r.status_code == 200
    import hashlib

    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"]
    dest.write_bytes(r.content)
    return dest


@pytest.mark.services
def test_distributed_real_engine_end_to_end(services_stack, tmp_path):
    stack = services_stack
    real_engine(stack)
    client = stack.start_api()
    teacher, dataset = upload_demo(client, stack)
    assert teacher["architecture"] == "hubert" and dataset["files"] == 36
    stack.start_worker()
    job_id = create_job(client, stack, teacher["id"], dataset["id"], **SPEC)
    job = wait_terminal(client, stack, job_id, timeout=900)
    assert job["status"] == "succeeded", job
    params = load_student_params(download(client, stack, job_id, "model", tmp_path / "model.zip"), tmp_path)
    report = client.get(f"/v1/jobs/{job_id}/artifacts/report.json", headers=stack.headers).json()
    # 6 training steps do not reach the 75% target; the count must be the one the engine reports, and smaller
    assert params == report["student"]["num_params"] == job["metrics"]["report"]["student"]["num_params"]
    assert 0 < params < teacher["num_params"]


@pytest.mark.services
def test_real_engine_sigkill_mid_stage1_resumes(services_stack):
    stack = services_stack
    real_engine(stack)
    client = stack.start_api()
    teacher, dataset = upload_demo(client, stack)
    worker = stack.start_worker()
    job_id = create_job(
        client, stack, teacher["id"], dataset["id"], **{**SPEC, "stage1_steps": 14, "checkpoint_every": 2}
    )
    wait_for(
        lambda: (
            get(client, stack, job_id)["stage"] == "distill_prune"
            and (get(client, stack, job_id).get("progress") or {}).get("step", 0) >= 6
        ),
        timeout=900,
        interval=0.5,
        what="stage 1 step 6",
    )
    worker.kill()
    killed_at = max(progress_steps(stack, job_id))
    stack.start_worker()
    job = wait_terminal(client, stack, job_id, timeout=900)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    steps = progress_steps(stack, job_id)
    assert steps[steps.index(killed_at) + 1] > 1, steps


def test_embedded_serve_and_submit_wait_real_engine(tmp_path):
    from test_cli_embedded import Served

    served = Served(tmp_path, {})
    try:
        r = served.cli(
            "submit",
            str(DEMO_TEACHER),
            str(DEMO_AUDIO),
            "--preset",
            "quick",
            "--stage1-steps",
            "6",
            "--stage2-steps",
            "3",
            "--batch-seconds",
            "4",
            "--wait",
            timeout=1800,
        )
        assert r.returncode == 0, r.stderr
        job_id = r.stdout.strip().splitlines()[-1]
        out = tmp_path / "out"
        assert served.cli("download", job_id, "model", "-o", str(out)).returncode == 0
        params = load_student_params(out / "model.zip", tmp_path)
        report = json.loads(served.cli("status", job_id, "--json").stdout)["metrics"]["report"]
        assert params == report["student"]["num_params"] < report["teacher"]["num_params"]
    finally:
        served.stop()


def test_make_audio_helper_is_importable(tmp_path):
    assert make_audio(tmp_path / "a", n=1).is_dir()

"""What the dashboard tests share besides fixtures: the test teacher and audio archives, API calls through the
tests' own httpx client, and the check that a page raised no JavaScript error."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

from tests.utils.servicekit import make_audio, safetensors_bytes, zip_dir

TEACHER_CONFIG = {
    "model_type": "hubert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "conv_dim": [512] * 7,
}


def teacher_zip(path: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hubert-test/config.json", json.dumps(TEACHER_CONFIG))
        zf.writestr("hubert-test/model.safetensors", safetensors_bytes({"w": [8, 8]}))
    path.write_bytes(buf.getvalue())
    return path


def audio_zip(path: Path, tmp: Path) -> Path:
    folder = make_audio(tmp / "audio", n=3)
    (folder / "notes.txt").write_text("not audio")
    path.write_bytes(zip_dir(folder))
    return path


def upload(client, kind: str, data: bytes) -> dict:
    r = client.post(f"/v1/{kind}", content=data, headers={"Content-Type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    return r.json()


def wait_job(client, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    events = client.get(f"/v1/jobs/{job_id}/events?limit=1000").json()["items"][-8:]
    raise AssertionError(
        f"job {job_id} did not reach {statuses}: {job['status']}; its last events: "
        + "; ".join(f"{e['kind']} {e['stage']} {e['step']}/{e['total']} {e['message']}" for e in events)
    )


def no_js_errors(page) -> None:
    assert page.js_errors == [], page.js_errors

"""The embedded default, as a user runs it: `skillkd serve` (API + one worker, SQLite, filesystem broker) and
`skillkd submit --wait`, `status`, `logs`, `download`, `keys`. Fast with the fake engine; the real-engine
version is in test_e2e_real_engine.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.utils.servicekit import DEMO_AUDIO, DEMO_TEACHER, REPO, free_port, service_env, wait_for


class Served:
    def __init__(self, tmp: Path, env_extra: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(
            {
                "SKILLKD_HOME": str(tmp / "home"),
                "SKILLKD_URL": self.url,
                "SKILLKD_BROKER_POLL_INTERVAL_S": "0.1",
                **env_extra,
            }
        )
        self.log = open(tmp / "serve.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(self.port), *args],
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._up, timeout=60, interval=0.2, what="skillkd serve")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited: {Path(self.log.name).read_text()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def served(tmp_path):
    s = Served(
        tmp_path,
        {
            "SKILLKD_ENGINE": "service.engine:FakeEngine",
            "SKILLKD_FAKE_STEPS": "5",
            "SKILLKD_AUTH_CACHE_S": "1",
        },
    )
    yield s
    s.stop()


def test_serve_submit_wait_status_logs_download(served, tmp_path):
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
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    assert job_id.startswith("job_")
    assert "teacher tch_" in r.stderr and "hubert" in r.stderr and "36 files" in r.stderr

    status = json.loads(served.cli("status", job_id, "--json").stdout)
    assert status["status"] == "succeeded" and status["spec"]["stage1_steps"] == 6
    assert job_id in served.cli("status").stdout
    logs = served.cli("logs", job_id).stdout
    assert "stage_started" in logs and "succeeded" in logs
    follow = served.cli("logs", job_id, "--follow")
    assert follow.returncode == 0 and "job succeeded" in follow.stdout

    out = tmp_path / "out"
    r = served.cli("download", job_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out / "model.zip") as zf:
        assert any(n.endswith("model.safetensors") for n in zf.namelist())
    assert (out / "report.json").is_file()

    r = served.cli("cancel", job_id)
    assert r.returncode != 0 and "job_finished" in r.stderr


def test_keys_and_bad_spec(served):
    key = served.cli("keys", "create", "--owner", "carol").stdout.strip()
    assert key.startswith("skd_")
    listing = served.cli("keys", "list").stdout
    assert "carol" in listing and "admin (admin)" in listing
    r = served.cli("status", "--api-key", key)
    assert r.returncode == 0 and r.stdout == ""  # carol sees none of admin's jobs
    r = served.cli("submit", str(DEMO_TEACHER), str(DEMO_AUDIO), "--sparsity", "2")
    assert r.returncode != 0 and "sparsity" in r.stderr
    assert "revoked 1" in served.cli("keys", "revoke", key[:12]).stdout
    time.sleep(1.2)  # the API caches a key's owner for SKILLKD_AUTH_CACHE_S; a revocation applies after it
    r = served.cli("status", "--api-key", key)
    assert r.returncode != 0 and "unauthorized" in r.stderr


def test_serve_with_two_api_processes(tmp_path):
    """`serve --workers 2`: two API processes on one port and one SQLite database, with the embedded worker;
    a job submitted through one runs and is read through both."""
    s = Served(
        tmp_path,
        {"SKILLKD_ENGINE": "service.engine:FakeEngine", "SKILLKD_FAKE_STEPS": "3"},
        args=("--workers", "2"),
    )
    try:
        r = s.cli(
            "submit",
            str(DEMO_TEACHER),
            str(DEMO_AUDIO),
            "--preset",
            "quick",
            "--stage1-steps",
            "3",
            "--stage2-steps",
            "2",
            "--wait",
        )
        assert r.returncode == 0, r.stderr
        job_id = r.stdout.strip().splitlines()[-1]
        key = (tmp_path / "home" / "admin.key").read_text().strip()
        before = _job_reads_counted(s.url)
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {key}"}) as client:
            # new connections, so the kernel hands them to either process
            statuses = {
                httpx.get(f"{s.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()[
                    "status"
                ]
                for _ in range(20)
            }
            assert client.get("/v1/jobs").json()["items"][0]["id"] == job_id
        assert statuses == {"succeeded"}
        # /metrics counts the requests of both processes, whichever of them answers the scrape
        assert [_job_reads_counted(s.url) for _ in range(6)] == [before + 20] * 6
        assert list(
            (tmp_path / "home" / "metrics").iterdir()
        )  # prometheus_client's files, one server's folder
    finally:
        s.stop()
    log = Path(s.log.name).read_text()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == 2, log
    assert not list((tmp_path / "home" / "metrics").iterdir())  # removed when the server stops


def _job_reads_counted(url: str) -> float:
    """GET /v1/jobs/{job_id} answered 200, as /metrics counts them (a new connection per scrape)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.search(
        r'^skillkd_http_requests_total\{method="GET",route="/v1/jobs/\{job_id\}",status="200"\} (\S+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_a_dead_embedded_worker_is_restarted_and_readyz_says_so_meanwhile(served, tmp_path):
    """Issue 22, item 4: SIGKILL of the worker that `skillkd serve` started (its whole process group): /readyz
    answers 503 naming the worker until the server has started it again (after a logged backoff), then
    200, and a job submitted after the kill runs."""
    import os
    import signal

    home = tmp_path / "home"
    pid_files = list(home.glob("worker-*.pid"))
    assert len(pid_files) == 1, list(home.iterdir())
    first = int(pid_files[0].read_text())
    os.killpg(first, signal.SIGKILL)

    def readyz() -> httpx.Response:
        return httpx.get(f"{served.url}/readyz", timeout=5)

    down = wait_for(lambda: (r := readyz()).status_code == 503 and r, timeout=10, interval=0.05, what="503")
    assert "job worker of this server is not running" in down.json()["checks"]["worker"], down.text
    wait_for(lambda: readyz().status_code == 200, timeout=60, interval=0.2, what="the worker back")
    assert int(pid_files[0].read_text()) != first
    r = served.cli("submit", str(DEMO_TEACHER), str(DEMO_AUDIO), "--stage1-steps", "2", "--wait", timeout=120)
    assert r.returncode == 0, r.stderr
    log = Path(served.log.name).read_text()
    assert f"the job worker (pid {first}) exited with code -9; starting it again in 1 s" in log, log[-3000:]

"""Fixtures of the dashboard tests: one `skillkd serve` (embedded mode, the dashboard fake engine) for the
session, API keys of two owners, alice's uploaded teacher and dataset and two finished jobs of hers, a real
headless Chromium driven by Playwright, and a folder for screenshots.

Chromium is Debian's (`apt-get install chromium`), launched from /usr/bin/chromium; Playwright never
downloads a browser here. Outside CI the tests skip, saying why, when Chromium or Playwright is missing; in
CI (CI=true) a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dashboard_kit import audio_zip, teacher_zip, upload, wait_job

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM = os.environ.get("SKILLKD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("SKILLKD_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@dataclass
class Service:
    url: str
    home: Path
    keys: dict[str, str]
    log: Path

    def client(self, owner: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[owner]}"}, timeout=30
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_keys(home: Path, owners: list[str]) -> dict[str, str]:
    """Keys made directly in the service's database, as `skillkd keys create` does (migrations first)."""
    from service.db import make_engine, make_sessionmaker, upgrade
    from service.keys import create_key

    url = f"sqlite:///{home / 'skillkd.db'}"
    upgrade(url)
    engine = make_engine(url)
    keys = {}
    with make_sessionmaker(engine)() as session:
        for owner in owners:
            keys[owner] = create_key(session, owner_name=owner, key_name="dashboard test").key
        session.commit()
    engine.dispose()
    return keys


@pytest.fixture(scope="session")
def service(chromium_ready, tmp_path_factory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("dashboard") / "home"
    home.mkdir()
    keys = _create_keys(home, ["alice", "bob", "carol"])
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
    env.update(
        {
            "SKILLKD_HOME": str(home),
            "SKILLKD_ENGINE": "dashboard_engine:DashboardFakeEngine",
            "SKILLKD_PROGRESS_INTERVAL_S": "0.2",
            "SKILLKD_STOP_POLL_INTERVAL_S": "0.1",
            "SKILLKD_BROKER_POLL_INTERVAL_S": "0.1",
            "SKILLKD_HEARTBEAT_INTERVAL_S": "1",
            "SKILLKD_MAX_JOBS_IN_FLIGHT": "10",
            "SKILLKD_UI_FAKE_STEP_S": os.environ.get("SKILLKD_UI_FAKE_STEP_S", "0.1"),
            "PYTHONPATH": os.pathsep.join(
                [str(REPO), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            ),
        }
    )
    log = home / "serve.log"
    out = open(log, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"skillkd serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"skillkd serve did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Service(url=url, home=home, keys=keys, log=log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:  # nothing to keep: a short grace, then the worker goes with its parent (parent-death signal)
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()


@pytest.fixture(scope="session")
def inputs(service, tmp_path_factory) -> dict:
    """alice's teacher and dataset, uploaded through the API."""
    tmp = tmp_path_factory.mktemp("inputs")
    with service.client("alice") as c:
        teacher = upload(c, "teachers", teacher_zip(tmp / "t.zip").read_bytes())
        dataset = upload(c, "datasets", audio_zip(tmp / "a.zip", tmp).read_bytes())
    return {"teacher": teacher, "dataset": dataset, "dir": tmp}


@pytest.fixture(scope="session")
def finished(service, inputs) -> list[dict]:
    """Two finished jobs of alice's teacher, made through the API: SKILL at 75% with evaluation, DPHuBERT at
    70% without."""
    jobs = []
    with service.client("alice") as c:
        for seed, (method, sparsity) in enumerate((("skill", 0.75), ("dphubert", 0.7))):
            body = {
                "teacher_id": inputs["teacher"]["id"],
                "dataset_id": inputs["dataset"]["id"],
                "spec": {
                    "method": method,
                    "sparsity": sparsity,
                    "stage1_steps": 12,
                    "stage2_steps": 4,
                    "seed": seed,
                    "evaluate": method == "skill",
                },
            }
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs.append(r.json())
        return [wait_job(c, j["id"], {"succeeded"}) for j in jobs]


@pytest.fixture(scope="session")
def evaluated(service, tmp_path_factory) -> list[dict]:
    """Three finished, evaluated jobs of carol's own teacher (alice's lists stay as they are): SKILL at 50%
    and 80% (seed 0) and DPHuBERT at 80% (seed 1), so two land at about the same speed-up and one of those
    two is beaten by the other."""
    tmp = tmp_path_factory.mktemp("carol")
    jobs = []
    with service.client("carol") as c:
        teacher = upload(c, "teachers", teacher_zip(tmp / "t.zip").read_bytes())
        dataset = upload(c, "datasets", audio_zip(tmp / "a.zip", tmp).read_bytes())
        for method, sparsity, seed in (("skill", 0.5, 0), ("skill", 0.8, 0), ("dphubert", 0.8, 1)):
            spec = {"method": method, "sparsity": sparsity, "seed": seed, "stage1_steps": 8}
            body = {
                "teacher_id": teacher["id"],
                "dataset_id": dataset["id"],
                "spec": spec | {"evaluate": True},
            }
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs.append(r.json())
        return [wait_job(c, j["id"], {"succeeded"}) for j in jobs]


@pytest.fixture(scope="session")
def browser(chromium_ready):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives each launch a fresh temporary profile (the --user-data-dir of the run).
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture
def page_for(browser, service):
    """page_for(owner) -> a page in a new browser context (its own session storage), signed in as `owner`."""
    contexts = []

    def open_page(owner: str | None, *, width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        page.goto(f"{service.url}/")
        if owner is not None:
            page.fill("#api-key", service.keys[owner])
            page.click("form.login button[type=submit]")
            page.wait_for_selector("#nav:not([hidden])")
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed dashboard test, the tail of `skillkd serve`'s log (API and worker) goes into the report:
    CI keeps only the test output, and a job that never ran is explained there."""
    outcome = yield
    report = outcome.get_result()
    service = getattr(item, "funcargs", {}).get("service")
    if report.failed and call.when == "call" and isinstance(service, Service) and service.log.is_file():
        tail = service.log.read_text(errors="replace")[-4000:]
        report.sections.append(("skillkd serve log (tail)", tail))

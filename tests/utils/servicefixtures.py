"""Service test fixtures (imported by tests/api/conftest.py and tests/worker/conftest.py): an app on a
migrated SQLite database with the fake engine and an in-memory queue, keys for two owners and an admin, a
teacher and a dataset already uploaded, and an in-process job runner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db import upgrade
from service.engine import FakeEngine
from service.keys import create_key
from service.queue import MemoryEnqueuer
from service.settings import Settings
from tests.utils.servicekit import fresh_postgres, make_audio, make_teacher, postgres_available, zip_dir


def small_settings(home: Path, **overrides) -> Settings:
    values = dict(
        home=home,
        engine="service.engine:FakeEngine",
        max_upload_bytes=4 * 1024 * 1024,
        max_archive_entries=50,
        max_extracted_bytes=16 * 1024 * 1024,
        max_compression_ratio=50.0,
        archive_ratio_floor_bytes=1024 * 1024,
        max_jobs_in_flight=3,
        max_attempts=3,
        heartbeat_interval_s=0.2,
        heartbeat_stale_s=1.5,
        requeue_queued_after_s=1.0,
        reaper_interval_s=0.5,
        progress_interval_s=0.0,
        stop_poll_interval_s=0.0,
        broker_poll_interval_s=0.1,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = small_settings(tmp_path / "home")
    upgrade(s.database_url)
    return s


@pytest.fixture
def postgres_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh, migrated PostgreSQL database, dropped afterwards; skips when none is reachable."""
    if not postgres_available():
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    with fresh_postgres() as url:
        upgrade(url)
        yield small_settings(tmp_path / "home", database_url=url)


@dataclass
class LiveApp:
    app: object
    client: TestClient
    alice: dict[str, str]
    database_url: str


@pytest.fixture
def postgres_app(postgres_settings: Settings) -> Iterator[LiveApp]:
    """The app on PostgreSQL with the fake engine, its client (server errors answered as 500, not raised) and
    alice's key."""
    app = create_app(
        postgres_settings, enqueuer=MemoryEnqueuer(), engine=FakeEngine(steps=3), run_reaper=False
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        with app.state.services.factory() as session:
            alice = {"Authorization": f"Bearer {create_key(session, owner_name='alice').key}"}
            session.commit()
        yield LiveApp(app, client, alice, postgres_settings.database_url)


@pytest.fixture
def enqueuer() -> MemoryEnqueuer:
    return MemoryEnqueuer()


@pytest.fixture
def app(settings: Settings, enqueuer: MemoryEnqueuer):
    return create_app(settings, enqueuer=enqueuer, engine=FakeEngine(steps=3), run_reaper=False)


@pytest.fixture
def client(app) -> TestClient:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keys(app) -> dict[str, dict[str, str]]:
    out = {}
    with app.state.services.factory() as session:
        for name, admin in (("alice", False), ("bob", False), ("root", True)):
            out[name] = {"Authorization": f"Bearer {create_key(session, owner_name=name, admin=admin).key}"}
        session.commit()
    return out


@pytest.fixture
def alice(keys) -> dict[str, str]:
    return keys["alice"]


@pytest.fixture
def teacher_zip(tmp_path: Path) -> bytes:
    return zip_dir(make_teacher(tmp_path / "teacher"))


@pytest.fixture
def audio_zip(tmp_path: Path) -> bytes:
    return zip_dir(make_audio(tmp_path / "audio"))


@pytest.fixture
def teacher(client, alice, teacher_zip) -> dict:
    r = client.post("/v1/teachers", content=teacher_zip, headers={**alice, "Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def dataset(client, alice, audio_zip) -> dict:
    r = client.post("/v1/datasets", content=audio_zip, headers={**alice, "Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def storage_is_clean(settings):
    """Asserts after the test that no temp file was left behind."""
    yield
    tmp = settings.storage / "tmp"
    assert not list(tmp.iterdir()) if tmp.exists() else True


@pytest.fixture
def make_runner(app, enqueuer):
    """A JobRunner on the app's database with a given fake engine (the worker, minus Celery)."""
    from worker.runner import JobRunner

    def build(engine: FakeEngine | None = None, worker: str = "w1") -> JobRunner:
        s = app.state.services
        return JobRunner(
            factory=s.factory,
            storage=s.storage,
            engine=engine or FakeEngine(steps=3),
            enqueuer=enqueuer,
            settings=s.settings,
            worker=worker,
        )

    return build


@pytest.fixture
def drain(make_runner, enqueuer):
    """Run every enqueued job to its end, in-process."""

    def run(engine: FakeEngine | None = None) -> list[str]:
        runner = make_runner(engine)
        return [runner.run(job_id) for job_id in enqueuer.pop_all()]

    return run


@pytest.fixture
def cli_as_alice(client, alice, monkeypatch):
    """The `skillkd` client commands talk to the in-process app as alice (the TestClient is an httpx.Client
    on it), so CLI tests need no server."""
    import cli.remote
    from cli.client import SkillkdClient

    def in_process(url, api_key):
        c = SkillkdClient("http://testserver", "unused")
        c.http.close()
        c.http = client
        c.close = lambda: None  # type: ignore[method-assign]
        return c

    client.headers.update(alice)
    monkeypatch.setattr(cli.remote, "connect", in_process)
    return client

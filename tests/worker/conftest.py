"""Fixtures of the worker tests: the shared service fixtures (tests/utils/servicefixtures.py) plus a `stack`:
an in-process API with the real Celery enqueuer and `skillkd worker` subprocesses on the same settings:
embedded (SQLite + filesystem broker), or PostgreSQL + a private Redis for the `services` tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db import upgrade
from service.keys import create_key
from service.queue import CeleryEnqueuer
from tests.utils.servicefixtures import *  # noqa: F401,F403
from tests.utils.servicefixtures import small_settings
from tests.utils.servicekit import (
    RedisServer,
    WorkerProcess,
    fresh_postgres,
    make_audio,
    make_teacher,
    postgres_available,
    redis_server_binary,
    service_env,
    zip_dir,
)
from worker.celery_app import make_celery

_FIELDS = (
    "home",
    "database_url",
    "broker_url",
    "engine",
    "max_attempts",
    "heartbeat_interval_s",
    "heartbeat_stale_s",
    "progress_interval_s",
    "stop_poll_interval_s",
    "broker_poll_interval_s",
)


class Stack:
    """API + workers sharing one configuration; `fake` sets the fake engine's knobs for new workers."""

    def __init__(self, settings, tmp: Path) -> None:
        self.settings, self.tmp = settings, tmp
        self.fake = {
            "SKILLKD_FAKE_STEPS": "4",
            "SKILLKD_FAKE_STEP_S": "0.05",
            "SKILLKD_FAKE_LEDGER": str(tmp / "ledger.txt"),
        }
        self.workers: list[WorkerProcess] = []
        self.clients: list[TestClient] = []
        self.headers: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        values = {f"SKILLKD_{f.upper()}": str(getattr(self.settings, f)) for f in _FIELDS}
        return service_env({**values, **self.fake})

    def start_worker(self) -> WorkerProcess:
        w = WorkerProcess(self.env(), self.tmp / f"worker{len(self.workers)}.log").start()
        self.workers.append(w)
        return w

    def start_api(self) -> TestClient:
        app = create_app(self.settings, enqueuer=CeleryEnqueuer(make_celery(self.settings)))
        client = TestClient(app)
        client.__enter__()
        self.clients.append(client)
        return client

    def stop_api(self, client: TestClient) -> None:
        client.__exit__(None, None, None)
        self.clients.remove(client)

    def upload_inputs(self, client: TestClient) -> tuple[str, str]:
        t = client.post(
            "/v1/teachers", content=zip_dir(make_teacher(self.tmp / "teacher")), headers=self.headers
        )
        d = client.post("/v1/datasets", content=zip_dir(make_audio(self.tmp / "audio")), headers=self.headers)
        assert t.status_code == 201 and d.status_code == 201, (t.text, d.text)
        return t.json()["id"], d.json()["id"]

    def ledger(self) -> list[str]:
        path = self.tmp / "ledger.txt"
        return path.read_text().split() if path.exists() else []

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker*.log")))

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for c in list(self.clients):
            self.stop_api(c)


def _stack(settings, tmp: Path):
    upgrade(settings.database_url)
    stack = Stack(settings, tmp)
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        stack.headers = {"Authorization": f"Bearer {create_key(session, owner_name='alice').key}"}
        session.commit()
    engine.dispose()
    return stack


@pytest.fixture
def embedded_stack(tmp_path: Path):
    stack = _stack(small_settings(tmp_path / "home"), tmp_path)
    yield stack
    stack.close()


@pytest.fixture(scope="session")
def pg_url():
    if not postgres_available():
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path):
    if not redis_server_binary():
        pytest.skip("redis-server binary not found (these tests restart their own Redis)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def services_stack(tmp_path: Path, pg_url: str, redis_server: RedisServer):
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)  # each test starts from empty tables in the session's database
    with engine.begin() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " CASCADE"))
    engine.dispose()
    settings = small_settings(tmp_path / "home", database_url=pg_url, broker_url=redis_server.url)
    stack = _stack(settings, tmp_path)
    stack.redis = redis_server
    yield stack
    stack.close()

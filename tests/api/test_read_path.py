"""The hot read, GET /v1/jobs/{id} (issue 11): one SELECT on a connection of `Services.reads`, which on
PostgreSQL is an asyncio engine whose pool holds autocommit connections that are not pinged before use. A
connection the database has closed (a restart) must cost the client nothing: the read is repeated on a new
connection."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.utils.servicekit import PG_ADMIN_URL, make_audio, make_teacher, zip_dir


def test_sqlite_reads_share_the_engine(app):
    assert app.state.services.reads is app.state.services.factory.kw["bind"]


@pytest.mark.services
def test_postgres_reads_survive_connections_closed_by_the_server(postgres_app, tmp_path):
    client, alice, services = postgres_app.client, postgres_app.alice, postgres_app.app.state.services
    assert isinstance(services.reads, AsyncEngine)  # awaited on the event loop, no thread-pool call
    assert services.reads.dialect.name == "postgresql"
    zip_headers = {**alice, "Content-Type": "application/zip"}
    teacher = client.post("/v1/teachers", content=zip_dir(make_teacher(tmp_path / "t")), headers=zip_headers)
    dataset = client.post("/v1/datasets", content=zip_dir(make_audio(tmp_path / "a")), headers=zip_headers)
    job = client.post(
        "/v1/jobs",
        json={"teacher_id": teacher.json()["id"], "dataset_id": dataset.json()["id"]},
        headers=alice,
    ).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).status_code == 200  # a pooled connection
    assert services.reads.pool.checkedin() >= 1
    database = postgres_app.database_url.rsplit("/", 1)[1]
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a database restart does to the pool's connections
        closed = conn.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": database},
        ).scalar()
    admin.dispose()
    assert closed >= 1
    for _ in range(3):
        r = client.get(f"/v1/jobs/{job['id']}", headers=alice)
        assert r.status_code == 200 and r.json()["id"] == job["id"], r.text

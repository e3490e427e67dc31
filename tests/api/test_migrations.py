"""Migrations: applied on SQLite and PostgreSQL, and the hand-written revision matches the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from servicekit import fresh_postgres, postgres_available
from sqlalchemy import inspect, text

from service.db import make_engine, upgrade
from service.models import Base

TABLES = {"owners", "api_keys", "teachers", "datasets", "jobs", "job_events", "artifacts", "alembic_version"}


def check(url: str) -> None:
    upgrade(url)
    upgrade(url)  # idempotent
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_sqlite_migrations_match_models_with_wal_and_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    check(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


@pytest.mark.services
def test_postgres_migrations_match_models():
    if not postgres_available():
        pytest.skip("PostgreSQL not reachable")
    with fresh_postgres() as url:
        check(url)

"""Migrations: applied on SQLite and PostgreSQL, and the hand-written revision matches the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import make_engine, upgrade
from service.models import Base
from tests.utils.servicekit import fresh_postgres, postgres_available

TABLES = {"owners", "api_keys", "teachers", "datasets", "jobs", "job_events", "artifacts", "alembic_version"}


def foreign_keys(engine) -> set[tuple[str, str, str, str]]:
    """(table, column, referred table, ON DELETE) of every foreign key in the database (alembic's comparison
    leaves ON DELETE out)."""
    found = set()
    for table in TABLES - {"alembic_version"}:
        for fk in inspect(engine).get_foreign_keys(table):
            (column,) = fk["constrained_columns"]
            ondelete = (fk.get("options") or {}).get("ondelete") or "NO ACTION"
            found.add((table, column, fk["referred_table"], ondelete.upper()))
    return found


def model_foreign_keys() -> set[tuple[str, str, str, str]]:
    return {
        (table.name, fk.parent.name, fk.column.table.name, (fk.ondelete or "NO ACTION").upper())
        for table in Base.metadata.tables.values()
        for fk in table.foreign_keys
    }


def check(url: str) -> None:
    upgrade(url)
    upgrade(url)  # idempotent
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], diff
        assert foreign_keys(engine) == model_foreign_keys()
        assert ("jobs", "teacher_ref", "teachers", "SET NULL") in foreign_keys(engine)
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


ROWS_0002 = [
    "INSERT INTO owners VALUES ('own_1', 'alice', 0, '2026-01-01')",
    "INSERT INTO teachers VALUES ('tch_1', 'own_1', 't', 'x', 1, 'hubert', 'hf', 2, 8, 100, 16000, "
    "'2026-01-01')",
    "INSERT INTO datasets VALUES ('ds_1', 'own_1', 'd', 'upload', NULL, NULL, 1, 1, 0.1, '{}', '2026-01-01')",
    "INSERT INTO jobs (id, owner_id, teacher_id, dataset_id, spec, status, progress, metrics, attempts, "
    "created_at, updated_at) VALUES ('job_1', 'own_1', 'tch_1', 'ds_1', '{}', 'succeeded', '{}', '{}', 1, "
    "'2026-01-01', '2026-01-01')",
    "INSERT INTO job_events (job_id, created_at, kind, stage, step, total, metrics, message) "
    "VALUES ('job_1', '2026-01-01', 'status', '', 0, 0, '{}', 'queued')",
    "INSERT INTO artifacts (job_id, name, path, media_type, sha256, size_bytes, created_at) "
    "VALUES ('job_1', 'report.json', 'jobs/job_1/report.json', 'application/json', 'x', 1, '2026-01-01')",
]


def test_sqlite_upgrade_of_a_populated_database_keeps_every_row(tmp_path):
    """0003 rebuilds `jobs` on SQLite: with foreign keys on, dropping the old table would have deleted its
    events and artifacts (ON DELETE CASCADE). The finished job's inputs become its foreign keys."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, "0002")
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in ROWS_0002:
            conn.execute(text(statement))
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM artifacts")).scalar() == 1
        refs = text("SELECT teacher_id, teacher_ref, dataset_ref, calibration_dataset_ref FROM jobs")
        assert conn.execute(refs).one() == ("tch_1", "tch_1", "ds_1", None)
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        conn.execute(text("DELETE FROM teachers"))  # the key is SET NULL now, the id stays
        assert conn.execute(text("SELECT teacher_id, teacher_ref FROM jobs")).one() == ("tch_1", None)
    engine.dispose()

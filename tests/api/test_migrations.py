"""Migrations: applied on SQLite and PostgreSQL, and the hand-written revision matches the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

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


# -- 0004: an owner's duplicate uploads (same sha256) merged into the oldest, then a unique index ------------
A, B, C = "a" * 64, "b" * 64, "c" * 64
JOB_COLUMNS = (
    "teacher_id, teacher_ref, dataset_id, dataset_ref, calibration_dataset_id, calibration_dataset_ref"
)


def teacher_row(row_id: str, owner: str, sha256: str, day: int) -> str:
    return (
        "INSERT INTO teachers (id, owner_id, name, sha256, size_bytes, architecture, layout, num_layers, "
        f"hidden_size, num_params, sample_rate, created_at) VALUES ('{row_id}', '{owner}', '{row_id}', "
        f"'{sha256}', 1, 'hubert', 'hf', 2, 8, 100, 16000, '2026-01-0{day} 00:00:00')"
    )


def dataset_row(row_id: str, owner: str, sha256: str | None, day: int) -> str:
    source, path, digest = (
        ("upload", "NULL", f"'{sha256}'") if sha256 else ("server_path", "'/srv/a'", "NULL")
    )
    return (
        "INSERT INTO datasets (id, owner_id, name, source, server_path, sha256, size_bytes, files, hours, "
        f"summary, created_at) VALUES ('{row_id}', '{owner}', '{row_id}', '{source}', {path}, {digest}, "
        f"1, 1, 0.1, '{{}}', '2026-01-0{day} 00:00:00')"
    )


def job_row(row_id: str, teacher: str, dataset: str, calibration: str | None, status: str) -> str:
    cal = f"'{calibration}'" if calibration else "NULL"
    return (
        f"INSERT INTO jobs (id, owner_id, {JOB_COLUMNS}, spec, status, progress, metrics, attempts, "
        f"created_at, updated_at) VALUES ('{row_id}', 'own_1', '{teacher}', '{teacher}', '{dataset}', "
        f"'{dataset}', {cal}, {cal}, '{{}}', '{status}', '{{}}', '{{}}', 0, '2026-01-09 00:00:00', "
        "'2026-01-09 00:00:00')"
    )


ROWS_0003_DUPLICATES = [
    "INSERT INTO owners (id, name, is_admin, created_at) VALUES ('own_1', 'alice', false, '2026-01-01')",
    "INSERT INTO owners (id, name, is_admin, created_at) VALUES ('own_2', 'bob', false, '2026-01-01')",
    teacher_row("tch_2", "own_1", A, 2),  # inserted first, but tch_1 is the older one
    teacher_row("tch_1", "own_1", A, 1),
    teacher_row("tch_3", "own_1", A, 3),
    teacher_row("tch_4", "own_2", A, 1),  # another owner's: theirs
    teacher_row("tch_5", "own_1", B, 1),
    dataset_row("ds_1", "own_1", C, 1),
    dataset_row("ds_2", "own_1", C, 2),
    dataset_row("ds_3", "own_1", None, 1),  # registered server directories: no sha256, never merged
    dataset_row("ds_4", "own_1", None, 2),
    job_row("job_1", "tch_2", "ds_2", "ds_2", "running"),
    job_row("job_2", "tch_1", "ds_1", None, "succeeded"),
    job_row("job_3", "tch_3", "ds_3", "ds_2", "paused"),
]


def check_duplicates_merged(url: str) -> None:
    """Duplicates at 0003 (as concurrent identical uploads made them) and jobs on them, upgraded: the oldest
    row of each (owner, sha256) is left, every job reference to the others points at it, and the index refuses
    a new duplicate (not a second NULL sha256); the downgrade drops the index."""
    from alembic import command

    from service.db import alembic_config

    upgrade(url, "0003")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in ROWS_0003_DUPLICATES:
                conn.execute(text(statement))
        upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM teachers ORDER BY id")).scalars().all() == [
                "tch_1",
                "tch_4",
                "tch_5",
            ]
            assert conn.execute(text("SELECT id FROM datasets ORDER BY id")).scalars().all() == [
                "ds_1",
                "ds_3",
                "ds_4",
            ]
            jobs = {
                row[0]: tuple(row[1:]) for row in conn.execute(text(f"SELECT id, {JOB_COLUMNS} FROM jobs"))
            }
        assert jobs == {
            "job_1": ("tch_1", "tch_1", "ds_1", "ds_1", "ds_1", "ds_1"),
            "job_2": ("tch_1", "tch_1", "ds_1", "ds_1", None, None),
            "job_3": ("tch_1", "tch_1", "ds_3", "ds_3", "ds_1", "ds_1"),
        }
        with engine.connect() as conn:
            conn.execute(text(dataset_row("ds_5", "own_1", None, 3)))  # NULLs stay allowed in multiples
            conn.execute(text(teacher_row("tch_6", "own_2", B, 3)))  # another owner's sha256 B
            conn.commit()
            with pytest.raises(IntegrityError):
                conn.execute(text(teacher_row("tch_7", "own_1", A, 4)))
            conn.rollback()
            with pytest.raises(IntegrityError):
                conn.execute(text(dataset_row("ds_6", "own_1", C, 4)))
            conn.rollback()
        command.downgrade(alembic_config(url), "0003")
        with engine.begin() as conn:
            conn.execute(text(teacher_row("tch_7", "own_1", A, 4)))
        assert "uq_teachers_owner_sha256" not in {
            ix["name"] for ix in inspect(engine).get_indexes("teachers")
        }
    finally:
        engine.dispose()


def test_sqlite_upgrade_merges_an_owners_duplicate_uploads(tmp_path):
    check_duplicates_merged(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.services
def test_postgres_upgrade_merges_an_owners_duplicate_uploads():
    if not postgres_available():
        pytest.skip("PostgreSQL not reachable")
    with fresh_postgres() as url:
        check_duplicates_merged(url)

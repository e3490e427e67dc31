"""Engine and session factory; migrations applied programmatically with `upgrade(url)`.

SQLite runs in WAL mode with foreign keys on and a busy timeout, so the API and the worker (two
processes) can share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_async_reads_engine(url: str, *, pool_size: int) -> AsyncEngine:
    """A PostgreSQL asyncio engine for single reads (psycopg 3's async driver, whatever driver `url` names):
    autocommit connections that are not pinged before use (the caller retries a read once on a connection the
    server has closed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"asyncio reads are for PostgreSQL, not {parsed.get_backend_name()}")
    return create_async_engine(
        parsed.set(drivername="postgresql+psycopg"),
        pool_size=pool_size,
        pool_pre_ping=False,
        isolation_level="AUTOCOMMIT",
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(factory: sessionmaker[Session]) -> None:
    """One round trip to the database (raises if it is unreachable): /readyz."""
    with factory() as session:
        session.execute(text("SELECT 1"))


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # passed as an attribute, not an ini option: URLs may hold '%' that configparser would interpolate
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations to `url` (creating the SQLite file if needed)."""
    from alembic import command

    if url.startswith("sqlite") and "///" in url:
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


__all__ = ["make_engine", "make_sessionmaker", "session_scope", "ping", "upgrade", "alembic_config"]

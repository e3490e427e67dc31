"""Alembic environment: the URL comes from `service.db.upgrade(url)` or from the deployment settings."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.db import make_engine
from service.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("url"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return url
    from service.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            if sqlite:
                # Batch mode rebuilds a table by copying it and dropping the old one; with foreign keys on,
                # that DROP deletes every row first, cascading to the rows that refer to it (a rebuilt `jobs`
                # would take all events and artifacts with it) or failing on RESTRICT. The pragma only takes
                # effect outside a transaction, hence before it; the keys are checked once migrations are
                # done.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
                if violations:
                    raise RuntimeError(f"foreign keys violated after the migrations: {violations[:5]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

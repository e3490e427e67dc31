"""64-bit event ids, step counters and file counts.

`job_events.step/total` were 32-bit: a job with more than 2^31 steps failed `internal` on PostgreSQL, and
`job_events.id` (with its sequence) and `artifacts.id` would wrap the same way on a long-lived service.
SQLite stores every INTEGER in 64 bits already; its autoincrement keys keep the type name INTEGER (the only
one SQLite autoincrements), the counters change their declared type only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = (("job_events", "step"), ("job_events", "total"), ("datasets", "files"))
KEYS = (("job_events", "id"), ("artifacts", "id"))


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, column in COUNTERS + (KEYS if postgres else ()):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
            )
    if postgres:
        for table, column in KEYS:
            op.execute(f"ALTER SEQUENCE IF EXISTS {table}_{column}_seq AS bigint")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for table, column in KEYS:
            op.execute(f"ALTER SEQUENCE IF EXISTS {table}_{column}_seq AS integer")
    for table, column in COUNTERS + (KEYS if postgres else ()):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
            )

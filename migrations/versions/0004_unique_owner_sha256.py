"""One teacher and one dataset per owner and archive: a unique index on (owner_id, sha256) of each.

An owner's upload of an archive they already uploaded resolves to the existing row (service.crud.same_upload),
but two identical uploads at once both looked, found nothing and both inserted. With the index the second
insert fails and the upload answers with the first row (api.uploads.ingest_archive). Rows are deleted
outright (no soft delete), so the index covers every row; a registered server directory has no sha256 (NULL),
and NULLs are distinct in a unique index on SQLite and PostgreSQL alike.

Duplicates made before are merged first: in each (owner_id, sha256) group the oldest row (the smallest id:
ids are time-ordered, and it is the row same_upload answered with) is kept, every job's reference to another
row of the group (`teacher_id`/`teacher_ref`; `dataset_id`/`dataset_ref`, `calibration_dataset_id`/
`calibration_dataset_ref`) is pointed at the kept row, and the other rows are deleted. Their files
(<storage>/teachers/<id>/, <storage>/datasets/<id>/, the same content as the kept row's) are left in storage:
a migration knows the database, not the deployment's storage root; an operator may remove those directories
(no row names them any more).

The downgrade drops the indexes; the merged rows stay merged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, its index, the jobs columns that refer to its rows)
TABLES = (
    ("teachers", "uq_teachers_owner_sha256", ("teacher_id", "teacher_ref")),
    (
        "datasets",
        "uq_datasets_owner_sha256",
        ("dataset_id", "dataset_ref", "calibration_dataset_id", "calibration_dataset_ref"),
    ),
)


def _duplicates(table: str) -> dict[str, str]:
    """{id of a duplicate row: id of the row kept in its place} for `table`."""
    rows = op.get_bind().execute(
        sa.text(
            f"SELECT owner_id, sha256, id FROM {table} WHERE sha256 IS NOT NULL ORDER BY owner_id, sha256, id"
        )
    )
    merged: dict[str, str] = {}
    kept: tuple[str, str, str] | None = None
    for owner_id, sha256, row_id in rows:
        if kept is not None and (kept[0], kept[1]) == (owner_id, sha256):
            merged[row_id] = kept[2]
        else:
            kept = (owner_id, sha256, row_id)
    return merged


def upgrade() -> None:
    bind = op.get_bind()
    for table, index, columns in TABLES:
        merged = _duplicates(table)
        if merged:
            pairs = [{"duplicate": duplicate, "kept": kept} for duplicate, kept in merged.items()]
            # the references first: on PostgreSQL deleting the rows would clear the foreign keys (SET NULL)
            for column in columns:
                bind.execute(sa.text(f"UPDATE jobs SET {column} = :kept WHERE {column} = :duplicate"), pairs)
            bind.execute(sa.text(f"DELETE FROM {table} WHERE id = :duplicate"), pairs)
        op.create_index(index, table, ["owner_id", "sha256"], unique=True)


def downgrade() -> None:
    for table, index, _ in TABLES:
        op.drop_index(index, table_name=table)

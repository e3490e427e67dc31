"""Teachers and datasets can be deleted once only finished jobs use them.

`jobs.teacher_id`, `dataset_id` and `calibration_dataset_id` were foreign keys ON DELETE RESTRICT, so any job,
even a finished one, kept its inputs on the server for ever. They become plain columns (what the job was
created with, kept after a deletion and shown by the API), and `teacher_ref`, `dataset_ref`,
`calibration_dataset_ref` are the foreign keys (ON DELETE SET NULL), filled from them: the database still
refuses a job on a missing input, and deleting an input clears them on its finished jobs. Whether an input may
be deleted (no unfinished job uses it) is checked by the DELETE itself (service.crud.delete_resource).

SQLite rebuilds the table (batch mode; migrations/env.py turns its foreign keys off meanwhile, or dropping the
old `jobs` table would cascade to every event and artifact). Its old constraints have no names, hence the
naming convention; PostgreSQL's have the names it gave them, read back from the database.

The downgrade restores the RESTRICT keys; it fails if a finished job's input has been deleted since (delete
those jobs first).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (column the API shows, its foreign key column, the table it refers to)
INPUTS = (
    ("teacher_id", "teacher_ref", "teachers"),
    ("dataset_id", "dataset_ref", "datasets"),
    ("calibration_dataset_id", "calibration_dataset_ref", "datasets"),
)
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _fk_names(column_names: set[str]) -> dict[str, str]:
    """The names of the jobs table's foreign keys on these columns (the convention's for unnamed ones)."""
    names = {}
    for fk in sa.inspect(op.get_bind()).get_foreign_keys("jobs"):
        (column,) = fk["constrained_columns"]
        if column in column_names:
            names[column] = fk["name"] or NAMING["fk"] % {
                "table_name": "jobs",
                "column_0_name": column,
                "referred_table_name": fk["referred_table"],
            }
    return names


def upgrade() -> None:
    old = _fk_names({column for column, _, _ in INPUTS})
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch:
        for column, ref, table in INPUTS:
            if column in old:
                batch.drop_constraint(old[column], type_="foreignkey")
            batch.add_column(sa.Column(ref, sa.String(40), nullable=True))
            batch.create_foreign_key(f"fk_jobs_{ref}_{table}", table, [ref], ["id"], ondelete="SET NULL")
    op.execute("UPDATE jobs SET " + ", ".join(f"{ref} = {column}" for column, ref, _ in INPUTS))


def downgrade() -> None:
    with op.batch_alter_table("jobs", naming_convention=NAMING) as batch:
        for column, ref, table in INPUTS:
            batch.drop_constraint(f"fk_jobs_{ref}_{table}", type_="foreignkey")
            batch.drop_column(ref)
            batch.create_foreign_key(
                f"fk_jobs_{column}_{table}", table, [column], ["id"], ondelete="RESTRICT"
            )

"""Runs as trials of a tuning study: nullable ``study`` (indexed) and ``trial`` columns, and the
run status "pruned" (a search stopped the trial early).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATUSES_0001 = ("running", "completed", "failed", "interrupted")
STATUSES_0002 = (*STATUSES_0001, "pruned")


def _status_check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    # On SQLite the batch copies the table (it cannot alter a CHECK constraint in place).
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("study", sa.String(255), nullable=True))
        batch.add_column(sa.Column("trial", sa.Integer(), nullable=True))
        batch.drop_constraint(op.f("ck_runs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_status"), _status_check(STATUSES_0002))
        batch.create_index(op.f("ix_runs_study"), ["study"])


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'pruned'")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(op.f("ix_runs_study"))
        batch.drop_constraint(op.f("ck_runs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_status"), _status_check(STATUSES_0001))
        batch.drop_column("trial")
        batch.drop_column("study")

"""Explanations as their own usage unit: ``usage_events.explanations`` (texts explained) and
``usage_events.evaluations`` (the model evaluations they cost), ``quota_counters.explanations``
(the month's explanations, for a plan's explanation quota). All integers, 0 for existing rows.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(_count("explanations"))
        batch.add_column(_count("evaluations"))
    with op.batch_alter_table("quota_counters") as batch:
        batch.add_column(_count("explanations"))


def downgrade() -> None:
    with op.batch_alter_table("quota_counters") as batch:
        batch.drop_column("explanations")
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("evaluations")
        batch.drop_column("explanations")

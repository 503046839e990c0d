"""The schema as it was before tunery had migrations: runs, the model registry, and tunery serve's
tenants, API keys, usage events, quota counters and idempotent responses.

A database made before migrations already has some or all of these tables (its columns are
checked by tunery.store.migrate first); this revision then creates only the missing ones, so
upgrading it records revision 0001 without recreating anything.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES_0001 = ("running", "completed", "failed", "interrupted")


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create(name: str, *elements) -> None:
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *elements)


def _index(name: str, table: str, columns: list[str]) -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}
    if name not in existing:
        op.create_index(op.f(name), table, columns)


def upgrade() -> None:
    _create(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("task", sa.String(64), nullable=True),
        sa.Column("backbone", sa.Text(), nullable=True),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        _ts("updated_at"),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in STATUSES_0001) + ")",
                           name=op.f("ck_runs_status")),
        sa.UniqueConstraint("name", name=op.f("uq_runs_name")),
    )
    _index("ix_runs_status", "runs", ["status"])

    _create(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_path", sa.Text(), nullable=False),
        sa.Column("run_name", sa.String(255), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_versions_name_version")),
    )
    _create(
        "model_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_aliases")),
        sa.UniqueConstraint("name", "alias", name=op.f("uq_model_aliases_name_alias")),
        sa.ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"],
                                name=op.f("fk_model_aliases_name_version_model_versions")),
    )

    _create(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    _create(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_api_keys_key_id")),
    )
    _index("ix_api_keys_tenant", "api_keys", ["tenant"])
    _create(
        "usage_events",
        sa.Column("id", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("texts", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("request_id", name=op.f("uq_usage_events_request_id")),
    )
    _index("ix_usage_events_created_at", "usage_events", ["created_at"])
    _index("ix_usage_events_tenant", "usage_events", ["tenant"])
    _create(
        "quota_counters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("texts", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_counters")),
        sa.UniqueConstraint("tenant", "period", name=op.f("uq_quota_counters_tenant_period")),
    )
    _create(
        "idempotency",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency")),
        sa.UniqueConstraint("key_id", "idempotency_key", name=op.f("uq_idempotency_key_id_idempotency_key")),
    )


def downgrade() -> None:
    for table in ("idempotency", "quota_counters", "usage_events", "api_keys", "tenants", "model_aliases",
                  "model_versions", "runs"):
        op.drop_table(table)

"""The tables of tunery serve: tenants, API keys, usage events, quota counters and stored
idempotent responses. Their logic lives with the server (``tunery.serve.keys``,
``tunery.serve.metering``), which works on them through `Store.transaction` / `Store.read`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tunery.store.base import Base

__all__ = ["ApiKeyRow", "IdempotencyRow", "QuotaCounterRow", "TenantRow", "UsageRow"]


class TenantRow(Base):
    """A customer. Its plan (a name in the serve config) sets prices, quota and rate limit."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    plan: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class ApiKeyRow(Base):
    """An API key: the public ``key_id`` and a SHA-256 of the secret; the secret is never stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    models: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"names": [...]}; None: every model
    admin: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class UsageRow(Base):
    """One billed request: a prediction (``texts`` and ``tokens``) or an explanation request
    (``explanations``, the texts explained, and ``evaluations``, the model evaluations they cost;
    its ``texts`` and ``tokens`` are 0, so prediction totals and prices stay predictions'). Written
    before the response is acknowledged."""

    __tablename__ = "usage_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(255))  # the served name
    model_ref: Mapped[str] = mapped_column(Text)  # name@version, or the run directory
    texts: Mapped[int]
    tokens: Mapped[int]
    latency_ms: Mapped[float]
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    explanations: Mapped[int] = mapped_column(default=0, server_default="0")  # revision 0003
    evaluations: Mapped[int] = mapped_column(default=0, server_default="0")  # revision 0003


class QuotaCounterRow(Base):
    """Running totals per tenant and calendar month: the row a quota check locks and bumps."""

    __tablename__ = "quota_counters"
    __table_args__ = (UniqueConstraint("tenant", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    period: Mapped[str] = mapped_column(String(7))  # "2026-11"
    requests: Mapped[int] = mapped_column(default=0)
    texts: Mapped[int] = mapped_column(default=0)
    tokens: Mapped[int] = mapped_column(default=0)
    explanations: Mapped[int] = mapped_column(default=0, server_default="0")  # revision 0003


class IdempotencyRow(Base):
    """The stored response of a request made with an ``Idempotency-Key``: a retry gets it back."""

    __tablename__ = "idempotency"
    __table_args__ = (UniqueConstraint("key_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]

"""API keys and tenants.

A key reads ``tny_<key_id>_<secret>``. The store keeps the public ``key_id`` and the SHA-256 of the
secret, never the secret itself: a leaked database does not leak usable keys. The secret has 256
bits of entropy, so a plain (unsalted, fast) hash is enough; checks compare digests in constant
time (``hmac.compare_digest``), and an unknown ``key_id`` costs the same comparison as a known one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunery.errors import ConfigError, RunError
from tunery.store import ApiKeyRow, Store, TenantRow, check_name, did_you_mean

PREFIX = "tny"
_KEY_RE = re.compile(rf"{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    plan: str
    models: list[str] | None  # None: every served model
    admin: bool
    created_at: datetime
    revoked_at: datetime | None
    note: str | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_dict(self) -> dict:
        return {
            "key_id": self.key_id, "tenant": self.tenant, "plan": self.plan, "models": self.models,
            "admin": self.admin, "note": self.note, "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }  # fmt: skip


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _info(key: ApiKeyRow, plan: str) -> KeyInfo:
    models = None if key.models is None else list(key.models.get("names", []))
    return KeyInfo(key.key_id, key.tenant, plan, models, key.admin, key.created_at, key.revoked_at, key.note)


def create_key(
    store: Store,
    *,
    tenant: str,
    plan: str | None = None,
    models: list[str] | None = None,
    admin: bool = False,
    note: str | None = None,
    known_plans: list[str] | None = None,
) -> tuple[str, KeyInfo]:
    """A new key for ``tenant``; returns the full key (shown once) and its record.

    A new tenant needs a ``plan``; for an existing tenant a different ``plan`` moves the tenant
    (and every key it has) to it. ``known_plans`` (the serve config's) validates the plan name.
    """
    check_name(tenant, "tenant")
    if plan is not None and known_plans is not None and plan not in known_plans:
        raise ConfigError(
            f"plan {plan!r} is not defined{did_you_mean(plan, known_plans)}; plans: "
            f"{', '.join(sorted(known_plans))} (set plans in the serve config, TUNERY_SERVE_CONFIG)"
        )
    if models is not None:
        models = sorted(set(models))
        if not models:
            raise RunError("--models is empty: name at least one model, or leave it out for every model")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    for _ in range(2):  # second pass: the tenant was created concurrently
        try:
            with store.transaction() as s:
                row = s.scalars(select(TenantRow).where(TenantRow.name == tenant).with_for_update()).one_or_none()
                if row is None:
                    if plan is None:
                        raise RunError(f"tenant {tenant!r} is new: give it a plan (--plan NAME)")
                    row = TenantRow(name=tenant, plan=plan, created_at=now)
                    s.add(row)
                elif plan is not None:
                    row.plan = plan
                key = ApiKeyRow(
                    key_id=key_id, secret_hash=_hash(secret), tenant=tenant,
                    models=None if models is None else {"names": models}, admin=admin, note=note,
                    created_at=now, revoked_at=None,
                )  # fmt: skip
                s.add(key)
                s.flush()
                return f"{PREFIX}_{key_id}_{secret}", _info(key, row.plan)
        except IntegrityError:
            continue
    raise RunError(f"could not create a key for tenant {tenant!r}: it was being changed concurrently; try again")


def list_keys(store: Store, *, tenant: str | None = None) -> list[KeyInfo]:
    query = select(ApiKeyRow, TenantRow.plan).join(TenantRow, TenantRow.name == ApiKeyRow.tenant)
    if tenant is not None:
        query = query.where(ApiKeyRow.tenant == tenant)
    with store.read() as s:
        return [_info(k, plan) for k, plan in s.execute(query.order_by(ApiKeyRow.created_at, ApiKeyRow.id))]


def revoke_key(store: Store, key_id: str) -> KeyInfo:
    """Revoke by key id (the part after ``tny_``); the full key works too. Idempotent."""
    match = _KEY_RE.fullmatch(key_id)
    key_id = match.group(1) if match else key_id
    with store.transaction() as s:
        row = s.execute(
            select(ApiKeyRow, TenantRow.plan)
            .join(TenantRow, TenantRow.name == ApiKeyRow.tenant)
            .where(ApiKeyRow.key_id == key_id)
            .with_for_update(of=ApiKeyRow)
        ).one_or_none()
        if row is None:
            raise RunError(f"no key with id {key_id!r} (see `tunery keys list`)")
        key, plan = row
        if key.revoked_at is None:
            key.revoked_at = datetime.now(timezone.utc)
        return _info(key, plan)


def authenticate(store: Store, token: str) -> KeyInfo | None:
    """The key's record if ``token`` is a valid, unrevoked key; else None."""
    match = _KEY_RE.fullmatch(token or "")
    key_id, secret = match.groups() if match else ("", "")
    with store.read() as s:
        row = s.execute(
            select(ApiKeyRow, TenantRow.plan)
            .join(TenantRow, TenantRow.name == ApiKeyRow.tenant)
            .where(ApiKeyRow.key_id == key_id)
        ).one_or_none()
    stored = row[0].secret_hash if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(_hash(secret), stored) or row is None:
        return None
    key, plan = row
    return None if key.revoked_at is not None else _info(key, plan)

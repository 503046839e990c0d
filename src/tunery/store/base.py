"""What every table and record shares: the declarative ``Base`` (one metadata, one naming
convention), timezone-aware UTC datetimes, and the helpers that name values in messages."""

from __future__ import annotations

import dataclasses
import difflib
import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from tunery.errors import RunError

MODEL_NAME_RULE = "1-128 characters: letters, digits, '-', '_' or '.', starting with a letter or digit"
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# Constraint and index names are part of the schema the migrations create and alter, so they are
# named by rule, never left to the database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes everywhere.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive
    UTC and made aware again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only accepts timezone-aware values")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Every table. A change to a table is a new revision in ``migrations/versions``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


def now() -> datetime:
    return datetime.now(timezone.utc)


def to_dict(obj: Any) -> dict[str, Any]:
    """A record as JSON-ready data: timestamps as ISO-8601 UTC strings; a deep copy that callers
    may mutate freely."""
    out = dataclasses.asdict(obj)
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid model, alias or tenant name; else a RunError giving the rule."""
    if not isinstance(value, str) or not _MODEL_NAME_RE.fullmatch(value):
        raise RunError(f"{what} {value!r} is not valid: use {MODEL_NAME_RULE}")
    return value


def did_you_mean(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

"""The record store: runs, model versions, and for serving: tenants, API keys and usage events.

One SQLAlchemy ``Base`` holds every table. The engine is created on first use from a URL:
``sqlite:///<TUNERY_HOME>/tunery.db`` by default (TUNERY_HOME: the per-user data directory), any
SQLAlchemy URL (PostgreSQL) through ``TUNERY_DB_URL`` or ``Store(url)``. Callers get plain frozen
dataclasses, never live ORM rows.

SQLite notes. Several processes (training runs, the server, a tuning study) may write one file, so
each connection turns on WAL and a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so a read-then-write transaction waits for
its turn instead of failing with "database is locked" when it tries to upgrade its lock. On other
databases the same code relies on unique constraints (+ retry) and ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKeyConstraint,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from tunery.errors import RunError

__all__ = ["Base", "ModelVersion", "RunRecord", "RunStatus", "Store", "default_db_url", "tunery_home", "user_home"]

RunStatus = Literal["running", "completed", "failed", "interrupted", "pruned"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
FINAL_STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted", "pruned")  # pruned: a search stopped it

MODEL_NAME_RULE = "1-128 characters: letters, digits, '-', '_' or '.', starting with a letter or digit"
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REF_FORMS = "refs look like 'name' (latest version), 'name@3' or 'name:prod'"

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_REGISTER_RETRIES = 20


def user_home() -> Path:
    """The per-user default store directory: the platform's user data directory for "tunery"
    (~/.local/share/tunery on Linux, following XDG_DATA_HOME), the same from every directory."""
    try:
        from platformdirs import user_data_path
    except ImportError:  # platformdirs is a dependency; this keeps XDG's rule where it is missing
        base = os.environ.get("XDG_DATA_HOME", "").strip()
        return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "tunery"
    return user_data_path("tunery", appauthor=False)


def tunery_home() -> Path:
    """The store directory: ``TUNERY_HOME`` if set, else `user_home()`. Absolute."""
    home = os.environ.get("TUNERY_HOME")
    if home:
        return Path(home).expanduser().resolve()
    home_dir = user_home().expanduser().resolve()
    _warn_about_local_store(home_dir)
    return home_dir


_warned_local: set[Path] = set()


def _warn_about_local_store(home: Path) -> None:
    """Before, the default store was ./.tunery of the working directory: say so, once, where such
    a store exists, rather than show an empty list of runs without a word."""
    local = Path(".tunery").resolve()
    if (local / "tunery.db").is_file() and local != home and local not in _warned_local:
        _warned_local.add(local)
        log.warning("a tunery store exists in this directory (%s), but the store used is %s (the default since "
                    "tunery keeps one store per user); to keep using the one here, set TUNERY_HOME=%s",
                    local, home, local)


def default_db_url() -> str:
    """``TUNERY_DB_URL`` if set; else ``sqlite:///<TUNERY_HOME>/tunery.db``, TUNERY_HOME defaulting to
    the per-user data directory (`user_home()`), so every directory sees the same runs.

    Nothing is created here; the directory appears when a Store first connects.
    """
    url = os.environ.get("TUNERY_DB_URL")
    if url:
        return url
    return f"sqlite:///{tunery_home() / 'tunery.db'}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# ----------------------------------------------------------------------------------------------
# Schema. Add tables by subclassing Base; create_all picks them up on the next first use.
# Migrations: create_all only creates missing tables, it never alters existing ones. The first
# change to an existing table should bring in Alembic (env.py targeting Base.metadata, run from
# Store._engine_for before create_all); the naming convention below keeps its diffs stable.
# ----------------------------------------------------------------------------------------------


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
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUSES) + ")", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    progress: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    task: Mapped[str | None] = mapped_column(String(64))
    backbone: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]  # last write of any kind: a heartbeat for cross-host checks later
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=1)
    study: Mapped[str | None] = mapped_column(String(255), index=True)  # the tuning study it is a trial of
    trial: Mapped[int | None]  # its trial number in that study


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    # The unique pair is what makes concurrent registration safe: a loser of the race retries.
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    run_path: Mapped[str] = mapped_column(Text)
    run_name: Mapped[str | None] = mapped_column(String(255))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class ModelAliasRow(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (
        UniqueConstraint("name", "alias"),
        ForeignKeyConstraint(
            ["name", "version"], ["model_versions.name", "model_versions.version"]
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    updated_at: Mapped[datetime]


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
    """One billed prediction request. Written before the response is acknowledged."""

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


# ----------------------------------------------------------------------------------------------
# What callers get
# ----------------------------------------------------------------------------------------------


def _to_dict(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)  # deep copies: callers may mutate the result freely
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in out.items()}


@dataclass(frozen=True)
class RunRecord:
    name: str
    path: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    task: str | None
    backbone: str | None
    started_at: datetime
    finished_at: datetime | None
    host: str
    pid: int | None
    attempts: int
    progress: dict[str, Any] = field(default_factory=dict)
    study: str | None = None
    trial: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 UTC strings."""
        return _to_dict(self)

    @classmethod
    def _from_row(cls, row: RunRow) -> RunRecord:
        return cls(
            name=row.name,
            path=row.path,
            status=row.status,
            config=dict(row.config or {}),
            metrics=dict(row.metrics or {}),
            error=row.error,
            task=row.task,
            backbone=row.backbone,
            started_at=row.started_at,
            finished_at=row.finished_at,
            host=row.host,
            pid=row.pid,
            attempts=row.attempts,
            progress=dict(row.progress or {}),
            study=row.study,
            trial=row.trial,
        )


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_path: str
    run_name: str | None
    aliases: list[str]
    metrics: dict[str, Any]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO-8601 UTC strings, plus ``ref``."""
        return {**_to_dict(self), "ref": self.ref}

    @classmethod
    def _from_row(cls, row: ModelVersionRow, aliases: list[str]) -> ModelVersion:
        return cls(
            name=row.name,
            version=row.version,
            run_path=row.run_path,
            run_name=row.run_name,
            aliases=sorted(aliases),
            metrics=dict(row.metrics or {}),
            created_at=row.created_at,
        )


def registered_run(version: ModelVersion) -> Path:
    """The run directory of a registered version. When it is gone (moved or deleted), a RunError
    that says where it was and how to re-point or remove the entry."""
    from tunery.rundir import is_complete

    path = Path(version.run_path)
    if is_complete(path):
        return path
    what = (
        "no longer exists"
        if not path.exists()
        else "is no longer a complete run directory (it needs tunery.json and model/)"
    )
    raise RunError(
        f"model {version.ref} is registered at {path}, which {what}: the run was moved or deleted. "
        f"If it was moved, re-point the entry with `tunery models relocate {version.ref} NEW_DIR`; "
        f"if it is gone, remove the entry with `tunery models delete {version.ref}`"
    )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _MODEL_NAME_RE.fullmatch(value):
        raise RunError(f"{what} {value!r} is not valid: use {MODEL_NAME_RULE}")
    return value


def _check_status(status: str) -> str:
    if status not in RUN_STATUSES:
        raise ValueError(
            f"status {status!r} is not one of {', '.join(RUN_STATUSES)}" + _did_you_mean(status, list(RUN_STATUSES))
        )
    return status


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows; assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _did_you_mean(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------


class Store:
    """Runs and model versions in one database. Cheap to construct; connects on first use.

    Safe to share between threads; several processes may use one SQLite file.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        self._engine: Engine | None = None
        self._read: sessionmaker[Session] | None = None
        self._write: sessionmaker[Session] | None = None
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def _where(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def location(self) -> str:
        """Where this store keeps its records, for people: a SQLite file's path, else the database
        URL with its password hidden."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
                and not url.database.startswith("file:"):
            return str(Path(url.database).expanduser().resolve())
        return self._where

    # -- engine and sessions ------------------------------------------------------------------

    def _setup(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            engine = _create_engine(self.url)
            # Write transactions carry this option; on SQLite it turns BEGIN into BEGIN IMMEDIATE.
            writer = engine.execution_options(tunery_write=True)
            with writer.begin() as conn:
                if engine.dialect.name == "postgresql":
                    # Several processes opening a new database at once would race in CREATE TABLE
                    # (a unique violation in pg_type); a transaction-scoped lock makes them take turns.
                    conn.execute(text("SELECT pg_advisory_xact_lock(7215634)"))
                Base.metadata.create_all(conn)
            self._read = sessionmaker(engine, expire_on_commit=False)
            self._write = sessionmaker(writer, expire_on_commit=False)
            self._engine = engine

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error."""
        if self._engine is None:
            self._setup()
        factory = self._write if write else self._read
        assert factory is not None
        with factory() as session, session.begin():
            yield session

    @property
    def dialect(self) -> str:
        """The database kind: "sqlite", "postgresql", ... (connects if not yet connected)."""
        if self._engine is None:
            self._setup()
        assert self._engine is not None
        return self._engine.dialect.name

    def close(self) -> None:
        """Release pooled connections. The store reconnects if used again."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine = self._read = self._write = None

    # -- runs -----------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        name: str,
        path: str,
        config: dict[str, Any],
        task: str | None = None,
        backbone: str | None = None,
        pid: int | None = None,
        new: bool = False,
    ) -> RunRecord:
        """Record run ``name`` as running in this process (or ``pid``, e.g. a launched child).

        A name that exists and is not running is resumed: status back to running, the new pid and
        host, ``attempts`` + 1, ``started_at`` kept; path and config are replaced, task and backbone
        only when given. Raises RunError if the name is running in a live process, or, with
        ``new=True`` (a fresh run, never a resume), if the name is recorded at all.
        """
        if not name:
            raise RunError("run name is empty: give the run a name")
        pid = os.getpid() if pid is None else pid
        for _ in range(2):  # second pass: another process inserted the same name meanwhile
            try:
                with self._session(write=True) as s:
                    row = s.scalars(
                        select(RunRow).where(RunRow.name == name).with_for_update()
                    ).one_or_none()
                    now = _now()
                    if row is None:
                        row = RunRow(
                            name=name, path=path, status="running", config=dict(config),
                            metrics={}, progress={}, error=None, task=task, backbone=backbone,
                            started_at=now, finished_at=None, updated_at=now,
                            host=self._host, pid=pid, attempts=1,
                        )  # fmt: skip
                        s.add(row)
                        s.flush()
                        return RunRecord._from_row(row)
                    if new:
                        raise RunError(
                            f"a run named {name!r} is already recorded ({row.status}, {row.path}, in "
                            f"{self._where}); choose another name (name: ... or --set name=...)"
                        )
                    if row.status == "running" and not self._is_stale(row):
                        raise RunError(
                            f"run {name!r} is already running (pid {row.pid} on host {row.host}, "
                            f"in {self._where}): wait for it, stop it, or choose another name; if that "
                            f"process is gone, record it with finish_run({name!r}, status='interrupted')"
                        )
                    row.status = "running"
                    row.path = path
                    row.config = dict(config)
                    row.task = task if task is not None else row.task
                    row.backbone = backbone if backbone is not None else row.backbone
                    row.host, row.pid = self._host, pid
                    row.finished_at, row.error = None, None
                    row.attempts += 1
                    row.updated_at = now
                    s.flush()
                    return RunRecord._from_row(row)
            except IntegrityError:
                continue
        raise RunError(f"could not record run {name!r} in {self._where}: it was being created concurrently")

    def finish_run(
        self,
        name: str,
        *,
        status: Literal["completed", "failed", "interrupted", "pruned"],
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Mark a run finished. ``metrics`` replaces the stored metrics when given."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
        with self._session(write=True) as s:
            row = self._run_row(s, name, lock=True)
            row.status = status
            row.finished_at = row.updated_at = _now()
            row.error = error
            if metrics is not None:
                row.metrics = dict(metrics)

    def delete_run(self, name: str) -> None:
        """Forget run ``name`` (a fresh run that failed before it had anything to resume from)."""
        with self._session(write=True) as s:
            s.delete(self._run_row(s, name, lock=True))

    _UPDATABLE = ("path", "config", "metrics", "error", "task", "backbone", "progress", "study", "trial")
    _READ_ONLY = ("name", "started_at", "finished_at", "host", "pid", "attempts")

    def update_run(self, name: str, **fields: Any) -> None:
        """Update a run in place, typically its progress while it trains.

        ``path``, ``config``, ``metrics``, ``error``, ``task``, ``backbone``, ``study``, ``trial``
        replace those fields; ``status`` sets the status (a final one also sets ``finished_at``,
        "running" clears it); ``progress={...}`` and any other keyword (``step=120,
        best_metric=0.91``) are merged into ``progress``. Pid, host and start time change only
        through start_run.
        """
        blocked = sorted(set(fields) & set(self._READ_ONLY))
        if blocked:
            raise TypeError(
                f"update_run cannot set {', '.join(blocked)}: use start_run / finish_run for those"
            )
        status = fields.pop("status", None)
        if status is not None:
            _check_status(status)
        with self._session(write=True) as s:
            row = self._run_row(s, name, lock=True)
            if status is not None:
                row.status = status
                if status == "running":
                    row.finished_at = None
                elif row.finished_at is None:
                    row.finished_at = _now()
            progress = dict(row.progress or {})
            progress.update(fields.pop("progress", None) or {})
            for key in self._UPDATABLE:
                if key in fields:
                    value = fields.pop(key)
                    setattr(row, key, dict(value) if isinstance(value, dict) else value)
            progress.update(fields)  # whatever is left is progress
            row.progress = progress
            row.updated_at = _now()

    def get_run(self, name: str) -> RunRecord:
        """The run called ``name``; a dead 'running' run on this host comes back 'interrupted'."""
        with self._session() as s:
            row = self._run_row(s, name)
            stale = self._is_stale(row)
            record = RunRecord._from_row(row)
        if stale:
            self._mark_interrupted([(record.name, record.pid)])
            record = self.get_run(name)
        return record

    def list_runs(
        self, *, status: str | None = None, study: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Runs, newest first; only those with this ``status``, or of this tuning ``study``, when
        given. Dead 'running' runs on this host are reported (and stored) as 'interrupted' first,
        which is what a SIGKILLed run looks like."""
        if status is not None:
            _check_status(status)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._reap_stale()
        query = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).limit(limit)
        if status is not None:
            query = query.where(RunRow.status == status)
        if study is not None:
            query = query.where(RunRow.study == study)
        with self._session() as s:
            return [RunRecord._from_row(row) for row in s.scalars(query)]

    def _run_row(self, s: Session, name: str, *, lock: bool = False) -> RunRow:
        query = select(RunRow).where(RunRow.name == name)
        row = s.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is not None:
            return row
        known = list(s.scalars(select(RunRow.name).order_by(RunRow.started_at.desc())))
        if not known:
            raise RunError(f"run {name!r} not found: no runs are recorded in {self._where} yet")
        hint = _did_you_mean(name, known) or f"; recent runs: {_listing(known)}"
        raise RunError(f"run {name!r} not found in {self._where}{hint}")

    def _is_stale(self, row: RunRow) -> bool:
        """Recorded as running here, but its process is gone. Other hosts cannot be checked."""
        return (
            row.status == "running"
            and row.host == self._host
            and row.pid is not None
            and not _pid_alive(row.pid)
        )

    def _reap_stale(self) -> None:
        with self._session() as s:
            rows = s.scalars(
                select(RunRow).where(RunRow.status == "running", RunRow.host == self._host)
            ).all()
            dead = [(row.name, row.pid) for row in rows if self._is_stale(row)]
        if dead:
            self._mark_interrupted(dead)

    def _mark_interrupted(self, dead: list[tuple[str, int | None]]) -> None:
        log.info("marking runs whose process is gone as interrupted: %s", [n for n, _ in dead])
        now = _now()
        with self._session(write=True) as s:
            for name, pid in dead:
                # Conditional on the same pid: a resume that raced us keeps its new process.
                s.execute(
                    update(RunRow)
                    .where(RunRow.name == name, RunRow.status == "running", RunRow.pid == pid)
                    .values(
                        status="interrupted",
                        finished_at=now,
                        updated_at=now,
                        error=f"process {pid} on host {self._host} ended without finishing the run "
                        "(killed or crashed)",
                    )
                )

    # -- model registry -------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        *,
        run_path: str,
        run_name: str | None = None,
        alias: str | None = None,
        metrics: dict[str, Any] | None = None,
        refuse_duplicate: bool = False,
    ) -> ModelVersion:
        """Add the next version of model ``name`` (1 for a new name), optionally aliased.

        ``refuse_duplicate=True``: raise RunError when this run (same path, or same run name) is
        already a version of ``name``, instead of registering it again as a new version."""
        _check_name(name, "model name")
        if alias is not None:
            _check_name(alias, "alias")
        for attempt in range(_REGISTER_RETRIES):
            try:
                with self._session(write=True) as s:
                    if refuse_duplicate:
                        same = self._same_run(s, name, str(run_path), run_name)
                        if same:
                            refs = ", ".join(f"{name}@{v}" for v in same)
                            raise RunError(
                                f"run {run_name or run_path} is already registered as {refs}; use that "
                                f"version (tunery models alias {name} ALIAS {same[-1]}), or pass --again to "
                                "register it once more as a new version"
                            )
                    latest = s.scalar(
                        select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)
                    )
                    row = ModelVersionRow(
                        name=name, version=(latest or 0) + 1, run_path=str(run_path),
                        run_name=run_name, metrics=dict(metrics or {}), created_at=_now(),
                    )  # fmt: skip
                    s.add(row)
                    s.flush()  # a concurrent writer with the same version fails here
                    if alias is not None:
                        self._put_alias(s, name, alias, row.version)
                    return ModelVersion._from_row(row, [alias] if alias else [])
            except IntegrityError:
                # Lost the race for this version number (not on SQLite: BEGIN IMMEDIATE serialises).
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise RunError(
            f"could not register a new version of model {name!r} in {self._where} after "
            f"{_REGISTER_RETRIES} attempts: too many concurrent registrations, try again"
        )

    @staticmethod
    def _same_run(s: Session, name: str, run_path: str, run_name: str | None) -> list[int]:
        """Versions of ``name`` that hold this run (same path, or same run name)."""
        same = ModelVersionRow.run_path == run_path
        if run_name:
            same = same | (ModelVersionRow.run_name == run_name)
        return list(
            s.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name, same)
                .order_by(ModelVersionRow.version)
            )
        )

    def versions_of_run(self, run_path: str, run_name: str | None = None) -> list[ModelVersion]:
        """Every registered version (of any model) that holds this run."""
        same = ModelVersionRow.run_path == str(run_path)
        if run_name:
            same = same | (ModelVersionRow.run_name == run_name)
        query = select(ModelVersionRow).where(same).order_by(ModelVersionRow.name, ModelVersionRow.version)
        with self._session() as s:
            rows = s.scalars(query).all()
            aliases = self._aliases(s, sorted({r.name for r in rows}))
            return [ModelVersion._from_row(r, aliases.get(r.name, {}).get(r.version, [])) for r in rows]

    def delete_model(self, ref: str) -> list[ModelVersion]:
        """Remove ``name@N`` (that version) or ``name`` (every version), with the aliases that
        point at what is removed; returns the removed versions. The run directories stay."""
        if ":" in ref:
            name, _, alias = ref.partition(":")
            raise RunError(
                f"{ref!r} is an alias: delete the version it points to ({name}@N, see tunery models list "
                f"{name}), or move the alias with tunery models alias {name} {alias} VERSION"
            )
        name, _, text = ref.partition("@")
        with self._session(write=True) as s:
            versions = self._versions(s, name)
            if text:
                if not text.isdigit() or int(text) not in versions:
                    raise RunError(
                        f"model {name!r} has no version {text} in {self._where}; versions: "
                        f"{_listing([str(v) for v in versions])}"
                    )
                versions = [int(text)]
            aliases = self._aliases(s, [name]).get(name, {})
            rows = s.scalars(
                select(ModelVersionRow).where(
                    ModelVersionRow.name == name, ModelVersionRow.version.in_(versions)
                )
            ).all()
            removed = [ModelVersion._from_row(r, aliases.get(r.version, [])) for r in rows]
            s.execute(
                delete(ModelAliasRow).where(
                    ModelAliasRow.name == name, ModelAliasRow.version.in_(versions)
                )
            )
            s.flush()  # the aliases reference the versions
            s.execute(
                delete(ModelVersionRow).where(
                    ModelVersionRow.name == name, ModelVersionRow.version.in_(versions)
                )
            )
        return sorted(removed, key=lambda v: v.version)

    def relocate_model(
        self, ref: str, run_path: str, *, run_name: str | None = None
    ) -> ModelVersion:
        """Point the version ``ref`` resolves to at ``run_path`` (its run was moved there); the
        aliases and metrics stay. Checking the directory is the caller's part."""
        version = self.resolve_model(ref)
        with self._session(write=True) as s:
            row = s.scalars(
                select(ModelVersionRow)
                .where(
                    ModelVersionRow.name == version.name, ModelVersionRow.version == version.version
                )
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise RunError(f"{version.ref} was deleted meanwhile; register the run again")
            row.run_path = str(run_path)
            if run_name is not None:
                row.run_name = run_name
            return ModelVersion._from_row(row, version.aliases)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name:alias`` at ``version``, moving the alias if it pointed elsewhere."""
        _check_name(alias, "alias")
        for _ in range(2):  # second pass: the same alias was created concurrently
            try:
                with self._session(write=True) as s:
                    versions = self._versions(s, name)
                    if version not in versions:
                        raise RunError(
                            f"model {name!r} has no version {version!r} in {self._where}; versions: "
                            f"{_listing([str(v) for v in versions])}"
                        )
                    self._put_alias(s, name, alias, version)
                    return
            except IntegrityError:
                continue
        raise RunError(f"could not set alias {name}:{alias}: it was being changed concurrently")

    def resolve_model(self, ref: str) -> ModelVersion:
        """``name`` (latest version), ``name@2`` (that version) or ``name:prod`` (an alias)."""
        with self._session() as s:
            if "@" in ref:
                name, _, text = ref.partition("@")
                self._versions(s, name)
                if not text.isdigit() or int(text) < 1:
                    raise RunError(
                        f"version {text!r} in {ref!r} is not a positive integer; {REF_FORMS}"
                    )
                row = s.scalars(
                    select(ModelVersionRow).where(
                        ModelVersionRow.name == name, ModelVersionRow.version == int(text)
                    )
                ).one_or_none()
                if row is None:
                    versions = [str(v) for v in self._versions(s, name)]
                    raise RunError(
                        f"model {name!r} has no version {text} in {self._where}; versions: "
                        f"{_listing(versions)} (use {name}@{versions[-1]} or {name} for the latest)"
                    )
            elif ":" in ref:
                name, _, alias = ref.partition(":")
                self._versions(s, name)
                version = s.scalar(
                    select(ModelAliasRow.version).where(
                        ModelAliasRow.name == name, ModelAliasRow.alias == alias
                    )
                )
                if version is None:
                    aliases = self._aliases(s, [name])
                    known = sorted(
                        f"{a} -> {v}" for v, names in aliases.get(name, {}).items() for a in names
                    )
                    have = (
                        f"aliases: {_listing(known)}"
                        + _did_you_mean(alias, [k.split(" -> ")[0] for k in known])
                        if known
                        else "it has no aliases yet (set one with Store.set_alias)"
                    )
                    raise RunError(f"model {name!r} has no alias {alias!r} in {self._where}; {have}")
                row = s.scalars(
                    select(ModelVersionRow).where(
                        ModelVersionRow.name == name, ModelVersionRow.version == version
                    )
                ).one()
            else:
                name = ref
                self._versions(s, name)
                row = s.scalars(
                    select(ModelVersionRow)
                    .where(ModelVersionRow.name == name)
                    .order_by(ModelVersionRow.version.desc())
                    .limit(1)
                ).one()
            aliases = self._aliases(s, [row.name]).get(row.name, {}).get(row.version, [])
            return ModelVersion._from_row(row, aliases)

    def list_models(self, name: str | None = None) -> list[ModelVersion]:
        """Every model version (or those of ``name``), by name then version."""
        query = select(ModelVersionRow).order_by(ModelVersionRow.name, ModelVersionRow.version)
        if name is not None:
            query = query.where(ModelVersionRow.name == name)
        with self._session() as s:
            rows = s.scalars(query).all()
            aliases = self._aliases(s, sorted({r.name for r in rows}))
            return [
                ModelVersion._from_row(r, aliases.get(r.name, {}).get(r.version, [])) for r in rows
            ]

    def _versions(self, s: Session, name: str) -> list[int]:
        """The versions of ``name``, ascending; RunError naming what exists if there are none."""
        _check_name(name, "model name")
        versions = list(
            s.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.name == name)
                .order_by(ModelVersionRow.version)
            )
        )
        if versions:
            return versions
        known = list(s.scalars(select(ModelVersionRow.name).distinct().order_by(ModelVersionRow.name)))
        if not known:
            raise RunError(
                f"model {name!r} is not registered: no models are registered in {self._where} yet"
            )
        hint = _did_you_mean(name, known) or f"; registered models: {_listing(known)}"
        raise RunError(f"model {name!r} is not registered in {self._where}{hint}")

    @staticmethod
    def _aliases(s: Session, names: list[str]) -> dict[str, dict[int, list[str]]]:
        """name -> version -> aliases."""
        out: dict[str, dict[int, list[str]]] = {}
        if not names:
            return out
        rows = s.execute(
            select(ModelAliasRow.name, ModelAliasRow.version, ModelAliasRow.alias).where(
                ModelAliasRow.name.in_(names)
            )
        )
        for name, version, alias in rows:
            out.setdefault(name, {}).setdefault(version, []).append(alias)
        return out

    @staticmethod
    def _put_alias(s: Session, name: str, alias: str, version: int) -> None:
        row = s.scalars(
            select(ModelAliasRow)
            .where(ModelAliasRow.name == name, ModelAliasRow.alias == alias)
            .with_for_update()
        ).one_or_none()
        if row is None:
            s.add(ModelAliasRow(name=name, alias=alias, version=version, updated_at=_now()))
        else:
            row.version, row.updated_at = version, _now()
        s.flush()


def _enable_wal(cursor: Any) -> None:
    """Readers then never block the writer. The mode is stored in the file; switching it needs an
    exclusive lock and does not wait on the busy timeout, so processes that open a new database
    at the same moment retry here."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as e:  # the driver's OperationalError
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.02))


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        # One shared connection, so every session sees the same database (single-threaded use).
        engine = create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # A server reads from many threads at once: keep their connections open (each new SQLite
        # connection re-runs the PRAGMAs below) instead of SQLAlchemy's default 5 + 10 overflow.
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                               pool_size=32, max_overflow=32)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see "begin").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("tunery_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine

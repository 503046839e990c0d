"""The database under the store: the engine for a URL, its sessions and transactions, and the
check at first use that the schema is the one this code expects (see `tunery.store.migrate`).

SQLite notes. Several processes (training runs, the server, a tuning study) may write one file, so
each connection turns on WAL and a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so a read-then-write transaction waits for
its turn instead of failing with "database is locked" when it tries to upgrade its lock. On other
databases the same code relies on unique constraints (+ retry) and ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tunery.store.home import default_db_url

__all__ = ["Database", "SQLITE_BUSY_TIMEOUT_MS", "connect", "hide_password"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def hide_password(url: str) -> str:
    """The URL as people may see it: its password shown as ***."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """One database, reached by URL. Cheap to construct; connects on first use, and then checks
    (or, for a new empty database, creates) the schema.

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
        return f"{type(self).__name__}({self._where!r})"

    @property
    def _where(self) -> str:
        return hide_password(self.url)

    @property
    def location(self) -> str:
        """Where this store keeps its records, for people: a SQLite file's path, else the database
        URL with its password hidden."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
                and not url.database.startswith("file:"):
            return str(Path(url.database).expanduser().resolve())
        return self._where

    # -- transactions -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: ``with store.transaction() as s: s.add(row)``. Committed when the
        block ends, rolled back if it raises. On SQLite it takes the write lock at the start, so a
        read-then-write waits for its turn rather than failing; keep it short."""
        with self._session(write=True) as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction: ``with store.read() as s: s.scalars(select(...))``. It sees one
        consistent state of the database and takes no write lock; write in `transaction` instead."""
        with self._session() as session:
            yield session

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        if self._engine is None:
            self._setup()
        factory = self._write if write else self._read
        assert factory is not None
        with factory() as session, session.begin():
            yield session

    # -- engine -----------------------------------------------------------------------------------

    def _setup(self) -> None:
        from tunery.store import migrate

        with self._lock:
            if self._engine is not None:
                return
            engine = connect(self.url)
            try:
                migrate.prepare(engine, self.url)
            except BaseException:
                engine.dispose()
                raise
            self._read = sessionmaker(engine, expire_on_commit=False)
            # Write transactions carry this option; on SQLite it turns BEGIN into BEGIN IMMEDIATE.
            self._write = sessionmaker(engine.execution_options(tunery_write=True), expire_on_commit=False)
            self._engine = engine

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


def connect(url: str) -> Engine:
    """An engine for ``url``. SQLite: WAL, a busy timeout, foreign keys on, and ``BEGIN IMMEDIATE``
    for connections that carry the ``tunery_write`` execution option. Nothing is created."""
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

"""The engine for a database URL.

SQLite notes. Several processes (training runs, the server, a tuning study) may write one file, so
each connection turns on WAL and a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so a read-then-write transaction waits for
its turn instead of failing with "database is locked" when it tries to upgrade its lock. On other
databases the same code relies on unique constraints (+ retry) and ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "connect", "hide_password"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def hide_password(url: str) -> str:
    """The URL as people may see it: its password shown as ***."""
    return make_url(url).render_as_string(hide_password=True)


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

"""The database under the store: its sessions and transactions, and at first use the check that
the schema is the one this code expects (`tunery.store.migrate`). The engine itself, with its SQLite
settings, comes from `tunery.store.engine`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tunery.store import migrate
from tunery.store.engine import connect, hide_password
from tunery.store.home import default_db_url

__all__ = ["Database"]


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

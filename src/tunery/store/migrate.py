"""Schema migrations: Alembic revisions shipped in ``migrations/versions``, run from here (no
alembic.ini), recorded in the table ``tunery_alembic_version`` (not Alembic's default
``alembic_version``: Optuna keeps its own in that name when a study shares the database).

At first use a Store calls `prepare`: a database at this code's revision is used as it is; a new,
empty one is created at the head revision; one that is older (or was made before tunery had
migrations, which is revision 0001 unstamped) is left alone with a `SchemaError` that says to run
``tunery db upgrade``; one that is newer (an unknown revision) says to upgrade tunery. Creating
and upgrading hold a lock, so processes that start together on a new database take turns: on
SQLite a file lock beside the database file, on PostgreSQL an advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

from tunery.errors import RunError
from tunery.store.engine import connect, hide_password
from tunery.store.home import default_db_url

__all__ = ["HEAD", "REVISIONS", "SchemaError", "SchemaState", "VERSION_TABLE", "current", "prepare", "upgrade"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "tunery_alembic_version"
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003")  # oldest first; the files in migrations/versions
HEAD = REVISIONS[-1]
# The tables of revision 0001, which databases made before migrations have without a version row.
TABLES_0001 = ("runs", "model_versions", "model_aliases", "tenants", "api_keys", "usage_events",
               "quota_counters", "idempotency")
PG_LOCK_KEY = 7215634  # pg_advisory_xact_lock: every tunery process creating or upgrading waits here
LOCK_TIMEOUT_S = 300.0


class SchemaError(RunError):
    """The database's schema is not the one this tunery works with; the message says what to run."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its recorded ``revision`` (None when there is none) and which of
    tunery's tables it has."""

    where: str  # the URL, password hidden
    revision: str | None
    tables: tuple[str, ...]

    @property
    def kind(self) -> str:
        """"empty", "unstamped" (tables made before migrations: revision 0001), "current" (at
        HEAD), "behind" (an older revision) or "unknown" (a revision this tunery does not know)."""
        if self.revision is None:
            return "unstamped" if self.tables else "empty"
        if self.revision == HEAD:
            return "current"
        return "behind" if self.revision in REVISIONS else "unknown"

    @property
    def effective_revision(self) -> str | None:
        return "0001" if self.kind == "unstamped" else self.revision

    def describe(self) -> str:
        """One line for people: the revision and what it means."""
        return {
            "empty": "empty (tunery creates its tables at first use)",
            "unstamped": f"0001 (made before tunery had schema migrations; older than this tunery's {HEAD}: "
                         "run `tunery db upgrade`)",
            "current": f"{HEAD} (head: up to date)",
            "behind": f"{self.revision} (older than this tunery's {HEAD}: run `tunery db upgrade`)",
            "unknown": f"{self.revision} (unknown to this tunery, whose newest is {HEAD}: a newer tunery "
                       "upgraded it)",
        }[self.kind]


def _upgrade_command(url: str) -> str:
    if url == default_db_url():
        return "tunery db upgrade"
    shown = hide_password(url)
    note = " (with the password in place of ***)" if make_url(url).password else ""
    return f"tunery db upgrade --url '{shown}'{note}"


def problem(state: SchemaState, url: str) -> str:
    """Why a Store cannot use this database, and what to run."""
    if state.kind in ("unstamped", "behind"):
        made = " (made before tunery had schema migrations)" if state.kind == "unstamped" else ""
        return (f"the tunery database {state.where} is at schema revision {state.effective_revision}{made}, "
                f"older than this tunery's {HEAD}: upgrade it with `{_upgrade_command(url)}` (every row is "
                "kept), then run this again")
    if state.kind == "unknown":
        return (f"the tunery database {state.where} is at schema revision {state.revision}, which this tunery "
                f"(newest revision {HEAD}) does not know: a newer tunery upgraded it. Upgrade tunery "
                "(pip install -U tunery), or point this one at another database (TUNERY_HOME or TUNERY_DB_URL)")
    raise AssertionError(state.kind)


def inspect_schema(conn: Connection, url: str) -> SchemaState:
    names = set(inspect(conn).get_table_names())
    revision = None
    if VERSION_TABLE in names:
        revision = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return SchemaState(hide_password(url), revision, tuple(t for t in TABLES_0001 if t in names))


@contextmanager
def schema_lock(engine: Engine, url: str) -> Iterator[Connection]:
    """A write transaction that no other tunery process creating or upgrading this database runs
    beside: a file lock ``<database>.lock`` on SQLite, an advisory lock on PostgreSQL."""
    parsed = make_url(url)
    database = parsed.database or ""
    lock: Any = nullcontext()
    lock_path = None
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") \
            and not database.startswith("file:"):
        from filelock import FileLock

        lock_path = f"{Path(database).expanduser()}.lock"
        lock = FileLock(lock_path, timeout=LOCK_TIMEOUT_S)
    try:
        with lock, engine.execution_options(tunery_write=True).begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn
    except Exception as e:
        if type(e).__name__ == "Timeout" and lock_path is not None:  # filelock.Timeout
            raise SchemaError(
                f"waited {LOCK_TIMEOUT_S:.0f} s for {lock_path}: another tunery process is creating or "
                "upgrading this database; try again when it is done"
            ) from None
        raise


def alembic_config(connection: Connection | None = None):
    """Alembic's Config for tunery's revisions, with ``connection`` for env.py to run them on (for
    alembic.command.upgrade, downgrade, revision ...); no alembic.ini is read."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _run_upgrade(conn: Connection, target: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(conn), target)


def columns_at(revision: str) -> dict[str, set[str]]:
    """Each table's column names in a database built up to ``revision`` (on an in-memory SQLite)."""
    engine = connect("sqlite://")
    try:
        with engine.begin() as conn:
            _run_upgrade(conn, revision)
            insp = inspect(conn)
            return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()
                    if t != VERSION_TABLE}
    finally:
        engine.dispose()


def _check_unstamped(conn: Connection, state: SchemaState) -> None:
    """Tables made before migrations must be revision 0001's; anything else is not adopted."""
    expected = columns_at("0001")
    insp = inspect(conn)
    for table in state.tables:
        have = {c["name"] for c in insp.get_columns(table)}
        if have != expected[table]:
            extra, missing = sorted(have - expected[table]), sorted(expected[table] - have)
            raise SchemaError(
                f"table {table!r} in {state.where} does not match tunery's schema revision 0001 (columns "
                f"not expected: {', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}), and the "
                "database records no revision: it was not made by a tunery release. Point tunery at another "
                "database (TUNERY_HOME or TUNERY_DB_URL), or move this one aside"
            )


def prepare(engine: Engine, url: str) -> None:
    """What a Store does at first use: go on if the schema is at HEAD, create it in an empty
    database, else raise a SchemaError that says what to run."""
    with engine.connect() as conn:
        state = inspect_schema(conn, url)
    if state.kind == "empty":
        with schema_lock(engine, url) as conn:
            state = inspect_schema(conn, url)  # another process may have created it meanwhile
            if state.kind == "empty":
                log.info("creating the tunery schema (revision %s) in %s", HEAD, state.where)
                _run_upgrade(conn)
                return
    if state.kind in ("empty", "current"):
        return
    raise SchemaError(problem(state, url))


def current(url: str | None = None) -> SchemaState:
    """Where the database at ``url`` (default: the store's) stands; changes nothing."""
    url = url or default_db_url()
    engine = connect(url)
    try:
        with engine.connect() as conn:
            return inspect_schema(conn, url)
    finally:
        engine.dispose()


def upgrade(url: str | None = None) -> tuple[SchemaState, SchemaState]:
    """Bring the database at ``url`` (default: the store's) to HEAD, keeping every row; a database
    made before migrations is recognised as revision 0001 (its tables are checked) and upgraded.
    Returns the state before and after. All or nothing: on error nothing is changed."""
    url = url or default_db_url()
    engine = connect(url)
    try:
        with schema_lock(engine, url) as conn:
            before = inspect_schema(conn, url)
            if before.kind == "unknown":
                raise SchemaError(problem(before, url))
            if before.kind == "unstamped":
                _check_unstamped(conn, before)
            if before.kind != "current":
                log.info("upgrading the tunery schema in %s from %s to %s", before.where,
                         before.effective_revision or "nothing", HEAD)
                _run_upgrade(conn)
            after = inspect_schema(conn, url)
        return before, after
    finally:
        engine.dispose()

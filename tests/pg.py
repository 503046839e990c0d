"""A real PostgreSQL server for tests: a throwaway cluster per test session, a fresh database per test.

``TUNERY_TEST_PG_URL`` (a SQLAlchemy URL whose user may ``CREATE DATABASE``) points the tests at an
existing server instead. Otherwise ``initdb``/``pg_ctl`` (from ``/usr/lib/postgresql/*/bin`` or
PATH) build a cluster in a temporary directory: trust auth, listening on 127.0.0.1 only on a free
port, its unix socket in that directory, run as the ``postgres`` user when we are root (PostgreSQL
refuses to run as root). The cluster is stopped and removed when the session ends.

If no server can be had the tests are skipped with the reason, unless ``TUNERY_REQUIRE_PG=1`` (set
by CI), which makes that a failure.

Use from a conftest or a test module::

    from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures)

    def test_something(pg_url):  # a new, empty database for this test
        store = Store(pg_url)

or without pytest fixtures: ``server = start_postgres(); url = server.create_database(); ...;
server.stop()``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ENV_URL = "TUNERY_TEST_PG_URL"
ENV_REQUIRE = "TUNERY_REQUIRE_PG"
DRIVER = "postgresql+psycopg"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started or reached; the message says why."""


def _find_tool(name: str) -> str | None:
    # Debian/Ubuntu keep the server binaries out of PATH, one directory per major version.
    def major(path: str) -> int:
        version = Path(path).parent.parent.name  # /usr/lib/postgresql/<version>/bin/<name>
        return int(version) if version.isdigit() else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=major)
    if candidates:
        return candidates[-1]  # the newest major version
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """An admin URL and a way to make and drop databases on it; ``stop()`` ends what we started."""

    url: str  # the admin database (postgres), SQLAlchemy form
    _stop: list = field(default_factory=list, repr=False)
    _databases: list[str] = field(default_factory=list, repr=False)

    def _admin(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        return create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        self._databases.append(name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database made by create_database, closing any connection still open to it."""
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = make_url(url_or_name).database if "://" in url_or_name else url_or_name
        engine = self._admin()
        try:
            with engine.connect() as conn:
                try:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # PostgreSQL 13+
                except Exception:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        finally:
            engine.dispose()
        if name in self._databases:
            self._databases.remove(name)

    def stop(self) -> None:
        while self._stop:
            self._stop.pop()()


def _run(cmd: list[str], *, user: str | None, cwd: str, timeout: float = 120) -> None:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = env["LANG"] = "C"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PostgresUnavailable(
            f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def start_postgres() -> PostgresServer:
    """``TUNERY_TEST_PG_URL`` if set; else a new local cluster. Raises PostgresUnavailable."""
    external = os.environ.get(ENV_URL)
    if external:
        server = PostgresServer(external)
        try:
            from sqlalchemy import text

            engine = server._admin()
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            finally:
                engine.dispose()
        except Exception as e:
            raise PostgresUnavailable(f"{ENV_URL}={external!r} is not reachable: {e}") from e
        return server

    initdb, pg_ctl = _find_tool("initdb"), _find_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PostgresUnavailable(
            "initdb/pg_ctl not found under /usr/lib/postgresql/*/bin or on PATH "
            "(install the server: apt-get install postgresql; or set TUNERY_TEST_PG_URL)"
        )
    user = None
    if os.geteuid() == 0:  # the server refuses to run as root
        user = "postgres"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server as") from None

    # Not under pytest's tmp dirs: those are 0700 root, which the postgres user cannot enter.
    tmp = tempfile.mkdtemp(prefix="tunery-pg-")
    if user is not None:
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data = os.path.join(tmp, "data")
    stops: list = []

    def remove() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    stops.append(remove)
    server = PostgresServer("", stops)
    try:
        db_user = user or pwd.getpwuid(os.geteuid()).pw_name
        # --no-sync only skips initdb's final flush of the template files; the server keeps fsync on.
        _run([initdb, "-D", data, "-A", "trust", "-U", db_user, "-E", "UTF8", "--locale=C", "--no-sync"],
             user=user, cwd=tmp)
        last: Exception | None = None
        for _ in range(3):  # a free port can be taken by someone else before the server binds it
            port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c max_connections=200"
            try:
                _run([pg_ctl, "-D", data, "-l", os.path.join(tmp, "server.log"), "-w", "-t", "60", "-o", options,
                      "start"], user=user, cwd=tmp)
            except PostgresUnavailable as e:
                last = e
                continue
            break
        else:
            log = Path(tmp, "server.log")
            raise PostgresUnavailable(f"{last}\n{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")

        def shutdown() -> None:
            try:
                _run([pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop"], user=user, cwd=tmp)
            except Exception:
                _run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], user=user, cwd=tmp)

        stops.append(shutdown)
        atexit.register(server.stop)  # if the session ends without its teardown
        server.url = f"{DRIVER}://{db_user}@127.0.0.1:{port}/postgres"
        return server
    except BaseException:
        server.stop()
        raise


def _unavailable(reason: str):
    message = f"PostgreSQL is not available: {reason}"
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{message}\n({ENV_REQUIRE}=1: a PostgreSQL server is required)", pytrace=False)
    pytest.skip(message)


_failure: list[str] = []  # the reason the session's server could not start, so it is tried once


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (skips, or fails under TUNERY_REQUIRE_PG=1, without one)."""
    if _failure:
        _unavailable(_failure[0])
    try:
        server = start_postgres()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as e:
        _failure.append(str(e))
        _unavailable(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for this test alone; dropped afterwards."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)

"""The store's schema migrations (tunery.store.migrate; Alembic revisions in tunery/store/migrations):
a database made before migrations is recognised and upgraded with every row kept, a Store refuses a
database older or newer than its code and says what to run, processes that open a new database
together create it once, and the models and the revisions agree. SQLite always; PostgreSQL where
tests/pg.py finds a server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, select, text

from tests.integration.helpers import cli
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures)
from tunery.serve import metering
from tunery.serve.keys import list_keys
from tunery.store import Base, SchemaError, Store, migrate
from tunery.store.engine import connect

LEGACY_SQL = Path(__file__).with_name("store_schema_before_migrations.sql")
AT = datetime(2026, 11, 17, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'tunery.db'}"
    return request.getfixturevalue("pg_url")


def _made_before_migrations(url: str) -> None:
    """A database as tunery made it before migrations: revision 0001's tables, no version row. On
    SQLite from the schema that code created (dumped to a file); on PostgreSQL by revision 0001."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript(LEGACY_SQL.read_text())
        return
    engine = connect(url)
    with engine.begin() as conn:
        migrate._run_upgrade(conn, "0001")
        conn.execute(text(f"DROP TABLE {migrate.VERSION_TABLE}"))
    engine.dispose()


def _at_revision(url: str, revision: str) -> None:
    engine = connect(url)
    with engine.begin() as conn:
        migrate._run_upgrade(conn, revision)
    engine.dispose()


def _fill(url: str) -> None:
    """Rows in every table of revision 0001 (written through the reflected tables, not the models,
    which are at head)."""
    at = AT.replace(tzinfo=None) if url.startswith("sqlite") else AT
    run = dict(path="/runs/x", config={"train": {"lr": 3e-5}}, metrics={"test": {"accuracy": 0.9}},
               progress={"step": 10}, task="binary", backbone="minilm-l6", started_at=at, updated_at=at,
               host="h", pid=1, attempts=1)
    rows = {
        "runs": [dict(run, id=1, name="done", status="completed", error=None, finished_at=at),
                 dict(run, id=2, name="killed", status="interrupted", error="killed", finished_at=None)],
        "model_versions": [dict(id=1, name="sent", version=1, run_path="/runs/done", run_name="done",
                                metrics={"accuracy": 0.9}, created_at=at),
                           dict(id=2, name="sent", version=2, run_path="/runs/killed", run_name=None,
                                metrics={}, created_at=at)],
        "model_aliases": [dict(id=1, name="sent", alias="prod", version=1, updated_at=at)],
        "tenants": [dict(id=1, name="acme", plan="free", created_at=at)],
        "api_keys": [dict(id=1, key_id="k1", secret_hash="0" * 64, tenant="acme", models={"names": ["sent"]},
                          admin=False, note="ci", created_at=at, revoked_at=None)],
        "usage_events": [dict(id=1, created_at=at, tenant="acme", key_id="k1", model="sent", model_ref="sent@1",
                              texts=2, tokens=10, latency_ms=1.5, request_id="r1", idempotency_key="i1")],
        "quota_counters": [dict(id=1, tenant="acme", period="2026-11", requests=1, texts=2, tokens=10)],
        "idempotency": [dict(id=1, key_id="k1", idempotency_key="i1", request_hash="h1",
                             response={"predictions": [1]}, created_at=at)],
    }
    assert set(rows) == set(migrate.TABLES_0001)
    engine = connect(url)
    meta = MetaData()
    with engine.begin() as conn:
        meta.reflect(conn)
        for table in migrate.TABLES_0001:  # in dependency order
            conn.execute(meta.tables[table].insert(), rows[table])
    engine.dispose()


def _dump(url: str) -> dict[str, list[dict]]:
    """Every row of every 0001 table, in 0001's columns."""
    columns = migrate.columns_at("0001")
    engine = connect(url)
    meta = MetaData()
    with engine.connect() as conn:
        meta.reflect(conn)
        out = {t: [{c: row[c] for c in sorted(columns[t])} for row in
                   conn.execute(select(meta.tables[t]).order_by(meta.tables[t].c.id)).mappings()]
               for t in migrate.TABLES_0001}
    engine.dispose()
    return out


def _revision(url: str) -> str | None:
    return migrate.current(url).revision


def test_revision_0001_is_the_schema_made_before_migrations(tmp_path) -> None:
    legacy, built = f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'built.db'}"
    _made_before_migrations(legacy)
    _at_revision(built, "0001")

    def schema(url: str) -> dict:
        engine = connect(url)
        with engine.connect() as conn:
            insp = inspect(conn)
            out = {t: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
                sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)),
                sorted((c["name"], " ".join(c["sqltext"].split())) for c in insp.get_check_constraints(t)),
                sorted((f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                       for f in insp.get_foreign_keys(t)),
                insp.get_pk_constraint(t)["name"],
            ) for t in insp.get_table_names() if t != migrate.VERSION_TABLE}
        engine.dispose()
        return out

    assert schema(built) == schema(legacy)


def test_the_models_match_the_migrations_at_head(db_url) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = Store(db_url)
    store.list_runs()  # a new database: created at head by the migrations
    with store._engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
    store.close()
    assert _revision(db_url) == migrate.HEAD


def test_a_filled_database_made_before_migrations_is_upgraded_keeping_every_row(db_url) -> None:
    _made_before_migrations(db_url)
    _fill(db_url)
    before = _dump(db_url)
    with pytest.raises(SchemaError, match="revision 0001 .made before tunery had schema migrations.*tunery db upgrade"):
        Store(db_url).list_runs()
    assert _revision(db_url) is None  # the check at start changes nothing

    was, now = migrate.upgrade(db_url)
    assert (was.kind, now.revision) == ("unstamped", migrate.HEAD)
    assert _dump(db_url) == before  # every row, every value

    store = Store(db_url)
    assert sorted(r.name for r in store.list_runs()) == ["done", "killed"]
    done = store.get_run("done")
    assert (done.status, done.metrics, done.started_at, done.study, done.trial) == \
        ("completed", {"test": {"accuracy": 0.9}}, AT, None, None)
    assert store.resolve_model("sent:prod").version == 1
    assert [v.ref for v in store.list_models("sent")] == ["sent@1", "sent@2"]
    assert [(k.key_id, k.tenant) for k in list_keys(store)] == [("k1", "acme")]
    assert metering.find_idempotent(store, "k1", "i1") == ("h1", {"predictions": [1]})
    store.update_run("killed", study="s", trial=1, status="pruned")  # what 0002 added works
    assert store.list_runs(study="s")[0].status == "pruned"
    store.close()


def test_a_store_refuses_an_older_database_and_says_what_to_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    default = f"sqlite:///{tmp_path / 'home' / 'tunery.db'}"
    _at_revision(default, "0001")
    with pytest.raises(SchemaError, match=rf"at schema revision 0001, older than this tunery's {migrate.HEAD}: upgrade it "
                                          r"with `tunery db upgrade` \(every row is kept\)"):
        Store().list_runs()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _at_revision(other, "0001")
    with pytest.raises(SchemaError, match=f"`tunery db upgrade --url '{other}'`"):
        Store(other).list_runs()
    assert _revision(other) == "0001"


def test_the_upgrade_message_hides_the_password() -> None:
    url = "postgresql+psycopg://tunery:s3cret@db.example:5432/tunery"
    message = migrate.problem(migrate.SchemaState(migrate.hide_password(url), "0001", ("runs",)), url)
    assert "s3cret" not in message
    assert "tunery db upgrade --url 'postgresql+psycopg://tunery:***@db.example:5432/tunery' (with the password " \
           "in place of ***)" in message


def test_a_database_from_a_newer_tunery_is_refused(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'tunery.db'}"
    Store(url).list_runs()
    engine = connect(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    for attempt in (lambda: Store(url).list_runs(), lambda: migrate.upgrade(url)):
        with pytest.raises(SchemaError, match=f"revision 0099, which this tunery .newest revision {migrate.HEAD}. does not know: "
                                              "a newer tunery upgraded it"):
            attempt()


def test_tables_that_tunery_did_not_make_are_not_adopted(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'tunery.db'}"
    _made_before_migrations(url)
    with sqlite3.connect(tmp_path / "tunery.db") as conn:
        conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
    with pytest.raises(SchemaError, match="table 'runs' .* does not match tunery's schema revision 0001 .columns not "
                                          "expected: owner; missing: none."):
        migrate.upgrade(url)
    assert _revision(url) is None and "study" not in migrate.columns_at("0001")["runs"]


def test_an_upgrade_can_be_undone_and_redone(tmp_path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'tunery.db'}"
    store = Store(url)
    store.start_run(name="t", path="runs/t", config={})
    store.update_run("t", study="s", trial=0, status="pruned")
    store.close()
    engine = connect(url)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0001")
    engine.dispose()
    assert _revision(url) == "0001"
    migrate.upgrade(url)
    run = Store(url).get_run("t")
    assert (run.status, run.study) == ("failed", None)  # 0001 has no "pruned" and no study


def test_the_revisions_in_code_are_the_scripts_shipped() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_current_head() == migrate.HEAD
    assert [s.revision for s in reversed(list(scripts.walk_revisions()))] == list(migrate.REVISIONS)


_FIRST_USE = """
import sys
from tunery.store import Store
store = Store(sys.argv[1])
store.start_run(name=sys.argv[2], path="runs/" + sys.argv[2], config={})
"""


def test_processes_opening_a_new_database_together_create_it_once(db_url) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, db_url, f"w{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    engine = connect(db_url)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars().all() == [migrate.HEAD]
    engine.dispose()
    assert sorted(r.name for r in Store(db_url).list_runs()) == ["w0", "w1", "w2"]


def test_db_current_and_db_upgrade_commands(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / '.tunery' / 'tunery.db'}"  # the test's TUNERY_HOME (conftest)
    _made_before_migrations(url)
    _fill(url)
    shown = cli("db", "current", "--check", cwd=tmp_path, expect=1)
    assert "revision: 0001 (made before tunery had schema migrations" in shown.stdout
    refused = cli("runs", "list", cwd=tmp_path, expect=1)
    assert "upgrade it with `tunery db upgrade`" in refused.stderr
    done = cli("db", "upgrade", cwd=tmp_path)
    assert f"upgraded from revision 0001 to {migrate.HEAD}" in done.stdout
    assert f"revision: {migrate.HEAD} (head: up to date)" in cli("db", "current", "--check", cwd=tmp_path).stdout
    assert f"already at revision {migrate.HEAD}; nothing to do" in cli("db", "upgrade", cwd=tmp_path).stdout
    assert "killed" in cli("runs", "list", cwd=tmp_path).stdout
    other = tmp_path / "new.db"
    assert f"upgraded from an empty database to {migrate.HEAD}" in cli("db", "upgrade", "--url", f"sqlite:///{other}",
                                                            cwd=tmp_path).stdout


@pytest.mark.parametrize("first", ["optuna", "tunery"])
def test_an_optuna_study_shares_the_database_in_either_order(tmp_path, first) -> None:
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'tunery.db'}"

    def study():
        storage = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name="s", storage=storage, load_if_exists=True).enqueue_trial({"x": 1})
        return optuna.get_all_study_names(storage)

    if first == "optuna":
        study()
    store = Store(url)
    store.start_run(name="r", path="runs/r", config={})
    assert study() == ["s"]  # Optuna keeps its own alembic_version; tunery's is tunery_alembic_version
    assert store.get_run("r").status == "running" and _revision(url) == migrate.HEAD
    store.close()

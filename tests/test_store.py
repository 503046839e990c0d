import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tunery.errors import RunError
from tunery.store import ModelVersion, RunRecord, Store, default_db_url


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'tunery.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    yield s
    s.close()


def _start(store: Store, name: str = "sst2-minilm", **kw) -> RunRecord:
    return store.start_run(name=name, path=f"runs/{name}", config={"train": {"lr": 3e-5}}, **kw)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists
    return proc.pid


# -- runs -------------------------------------------------------------------------------------


def test_run_lifecycle_running_progress_completed(store: Store) -> None:
    started = _start(store, task="classification", backbone="minilm-l6")
    assert (started.status, started.attempts, started.finished_at) == ("running", 1, None)
    assert started.started_at.tzinfo is not None

    store.update_run("sst2-minilm", step=100, best_metric=0.91)
    store.update_run("sst2-minilm", step=200)
    store.finish_run("sst2-minilm", status="completed", metrics={"dev": {"accuracy": 0.92}})

    run = store.get_run("sst2-minilm")
    assert run.status == "completed"
    assert run.progress == {"step": 200, "best_metric": 0.91}  # merged, not replaced
    assert run.metrics == {"dev": {"accuracy": 0.92}}
    assert (run.task, run.backbone, run.config) == ("classification", "minilm-l6", {"train": {"lr": 3e-5}})
    assert run.finished_at >= run.started_at


def test_resume_increments_attempts_and_keeps_started_at(store: Store) -> None:
    first = _start(store)
    store.finish_run("sst2-minilm", status="failed", error="CUDA out of memory")

    resumed = _start(store, pid=os.getppid())  # a live process other than the first
    assert resumed.status == "running"
    assert resumed.attempts == 2
    assert resumed.started_at == first.started_at
    assert resumed.error is None and resumed.finished_at is None
    assert resumed.pid != first.pid


def test_a_killed_run_can_be_resumed_directly(store: Store) -> None:
    _start(store, pid=_dead_pid())  # still recorded as running
    assert _start(store).attempts == 2


def test_starting_a_live_running_run_again_is_refused(store: Store) -> None:
    _start(store)
    with pytest.raises(RunError, match="already running"):
        _start(store)


def test_dead_pid_is_reported_and_persisted_as_interrupted(store: Store) -> None:
    _start(store, pid=_dead_pid())

    [run] = store.list_runs()
    assert run.status == "interrupted"
    assert "ended without finishing" in run.error
    with store._engine.connect() as conn:  # persisted, not only reported
        assert conn.exec_driver_sql("SELECT status FROM runs").scalar() == "interrupted"


def test_get_run_also_reports_a_dead_run_as_interrupted(store: Store) -> None:
    _start(store, pid=_dead_pid())
    assert store.get_run("sst2-minilm").status == "interrupted"


def test_get_run_unknown_name_suggests_the_closest(store: Store) -> None:
    _start(store, "sst2-minilm")
    _start(store, "waimai-bert")
    with pytest.raises(RunError, match=r"run 'sst2-minilim' not found .*did you mean 'sst2-minilm'"):
        store.get_run("sst2-minilim")


def test_list_runs_newest_first_with_limit(store: Store) -> None:
    for name in ["a", "b", "c"]:
        _start(store, name)
    assert [r.name for r in store.list_runs()] == ["c", "b", "a"]
    assert [r.name for r in store.list_runs(limit=2)] == ["c", "b"]


def test_run_record_to_dict_has_iso_utc_timestamps(store: Store) -> None:
    d = _start(store).to_dict()
    assert d["finished_at"] is None
    parsed = datetime.fromisoformat(d["started_at"])
    assert parsed.utcoffset() == timezone.utc.utcoffset(None)


# -- model registry ---------------------------------------------------------------------------


def test_register_model_versions_increment_per_name(store: Store) -> None:
    v1 = store.register_model("sentiment", run_path="runs/a", run_name="a", metrics={"acc": 0.9})
    v2 = store.register_model("sentiment", run_path="runs/b")
    other = store.register_model("topics", run_path="runs/c")
    assert [v1.ref, v2.ref, other.ref] == ["sentiment@1", "sentiment@2", "topics@1"]
    assert [m.ref for m in store.list_models("sentiment")] == ["sentiment@1", "sentiment@2"]
    assert v1.to_dict()["ref"] == "sentiment@1" and v1.to_dict()["metrics"] == {"acc": 0.9}


def test_alias_is_set_then_moved(store: Store) -> None:
    store.register_model("sentiment", run_path="runs/a", alias="prod")
    store.register_model("sentiment", run_path="runs/b")
    assert store.resolve_model("sentiment:prod").version == 1

    store.set_alias("sentiment", "prod", 2)
    assert store.resolve_model("sentiment:prod").version == 2
    assert {m.version: m.aliases for m in store.list_models()} == {1: [], 2: ["prod"]}


def test_set_alias_to_missing_version_names_the_versions(store: Store) -> None:
    store.register_model("sentiment", run_path="runs/a")
    with pytest.raises(RunError, match="has no version 7 .*versions: 1"):
        store.set_alias("sentiment", "prod", 7)


def test_resolve_all_three_ref_forms(store: Store) -> None:
    store.register_model("sentiment", run_path="runs/a", alias="prod")
    store.register_model("sentiment", run_path="runs/b")
    assert store.resolve_model("sentiment").run_path == "runs/b"
    assert store.resolve_model("sentiment@1").run_path == "runs/a"
    assert store.resolve_model("sentiment:prod").ref == "sentiment@1"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("sentimnt", r"'sentimnt' is not registered .*did you mean 'sentiment'"),
        ("sentiment@3", r"has no version 3 .*versions: 1"),
        ("sentiment@x", r"version 'x' in 'sentiment@x' is not a positive integer"),
        ("sentiment:staging", r"has no alias 'staging' .*aliases: prod -> 1"),
        ("bad name", r"model name 'bad name' is not valid: use .*letters, digits"),
    ],
)
def test_resolve_errors_name_what_exists(store: Store, ref: str, message: str) -> None:
    store.register_model("sentiment", run_path="runs/a", alias="prod")
    with pytest.raises(RunError, match=message):
        store.resolve_model(ref)


def test_resolve_on_empty_registry_says_so(store: Store) -> None:
    with pytest.raises(RunError, match="no models are registered"):
        store.resolve_model("sentiment")


def test_register_rejects_an_invalid_model_name(store: Store) -> None:
    with pytest.raises(RunError, match=r"model name 'my model/v1' is not valid"):
        store.register_model("my model/v1", run_path="runs/a")


def test_concurrent_registration_gives_distinct_versions(store: Store, url: str) -> None:
    threads, per_thread = 6, 3
    barrier = threading.Barrier(threads)
    versions: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        own = Store(url) if i % 2 else store  # a shared Store and separate ones, like processes
        try:
            barrier.wait()
            for _ in range(per_thread):
                versions.append(own.register_model("sentiment", run_path=f"runs/{i}").version)
        except BaseException as e:  # surfaced below
            errors.append(e)
        finally:
            if own is not store:
                own.close()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert sorted(versions) == list(range(1, threads * per_thread + 1))


# -- configuration and sharing ----------------------------------------------------------------


def test_tunery_db_url_env_wins(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("TUNERY_DB_URL", url)
    monkeypatch.setenv("TUNERY_HOME", "/nonexistent")
    assert default_db_url() == url
    assert Store().url == url


def test_tunery_home_env_is_resolved_and_created_on_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TUNERY_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNERY_HOME", "home")
    home = tmp_path / "home"
    assert default_db_url() == f"sqlite:///{home / 'tunery.db'}"

    store = Store()
    assert not home.exists()  # constructing connects to nothing
    store.register_model("sentiment", run_path="runs/a")
    store.close()
    assert (home / "tunery.db").is_file()


def test_default_home_is_the_users_data_dir_whatever_the_working_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TUNERY_DB_URL", raising=False)
    monkeypatch.delenv("TUNERY_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert default_db_url() == f"sqlite:///{tmp_path / 'data' / 'tunery' / 'tunery.db'}"


def test_two_stores_on_one_file_see_each_others_writes(store: Store, url: str) -> None:
    other = Store(url)
    _start(store, "a")
    assert other.get_run("a").status == "running"

    other.finish_run("a", status="completed")
    other.register_model("sentiment", run_path="runs/a", alias="prod")
    assert store.get_run("a").status == "completed"
    assert store.resolve_model("sentiment:prod").ref == "sentiment@1"
    other.close()


def test_sqlite_file_uses_wal(store: Store, url: str) -> None:
    store.list_runs()
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"

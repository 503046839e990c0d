"""Runs as trials of a tuning study: the `study` and `trial` columns (revision 0002) and the
"pruned" status, as the tune capability calls them."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tunery.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'tunery.db'}")
    yield s
    s.close()


def _start(store: Store, name: str) -> None:
    store.start_run(name=name, path=f"runs/{name}", config={})


def test_update_run_links_a_run_to_its_study_and_trial(store: Store) -> None:
    _start(store, "t0")
    store.update_run("t0", study="sst2-search", trial=0)
    run = store.get_run("t0")
    assert (run.study, run.trial, run.status) == ("sst2-search", 0, "running")
    assert run.to_dict()["study"] == "sst2-search"


def test_list_runs_filters_by_study(store: Store) -> None:
    for i, study in enumerate(["a", "b", "a", None]):
        _start(store, f"r{i}")
        if study:
            store.update_run(f"r{i}", study=study, trial=i)
    assert sorted(r.name for r in store.list_runs(study="a")) == ["r0", "r2"]
    assert [r.name for r in store.list_runs(study="none-such")] == []
    assert len(store.list_runs()) == 4


def test_pruned_is_a_final_status_everywhere(store: Store) -> None:
    _start(store, "p")
    store.update_run("p", status="pruned", study="s", trial=3)
    run = store.get_run("p")
    assert run.status == "pruned" and run.finished_at is not None
    assert [r.name for r in store.list_runs(status="pruned")] == ["p"]
    _start(store, "q")
    store.finish_run("q", status="pruned")
    assert store.get_run("q").status == "pruned"
    _start(store, "q")  # a pruned run can be started again, as a failed one can
    assert store.get_run("q").status == "running" and store.get_run("q").finished_at is None


def test_update_run_refuses_an_unknown_status(store: Store) -> None:
    _start(store, "x")
    with pytest.raises(ValueError, match="'prunned' is not one of .*did you mean 'pruned'"):
        store.update_run("x", status="prunned")
    assert store.get_run("x").status == "running"

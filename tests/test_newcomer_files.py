"""Issue 9, files and the store: written files follow the umask, a completed run drops its training
checkpoints, and the store is one per user (not ./.tunery of each directory)."""

from __future__ import annotations

import json
import logging
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and everything under it, by path relative to `root`."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def wrong_modes(root: Path, file_mode: int, dir_mode: int) -> dict[str, str]:
    return {name: oct(mode) for name, mode in modes(root).items()
            if mode != (dir_mode if (root / name).is_dir() else file_mode)}


class _StopAfterFirstCheckpoint:
    """Ctrl-C once the run has a checkpoint to resume from."""

    def __init__(self, work: Path):
        self.work = work

    def on_step(self, state):
        if (self.work / "checkpoints" / "last" / "trainer.pt").exists():
            raise KeyboardInterrupt

    def __getattr__(self, name):  # the other hooks do nothing
        return lambda *args: None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_backbone):
    """Two small runs trained under two umasks, with what they wrote on the way.

    "private" (umask 027): interrupted after its first checkpoint, then resumed to the end, then
    used for a predictions file. "shared" (umask 022): train.keep_checkpoints true. The report's
    figures are left out (write_report still writes report.html, through the same atomic write):
    they take most of a tiny run's time and say nothing about files."""
    from tunery import pipeline
    from tunery.config import config_from_dict
    from tunery.evaluate import report
    from tunery.predict import load
    from tunery.store import Store

    root = tmp_path_factory.mktemp("newcomer-files")
    data = root / "reviews.csv"
    make_dataset("binary", n=60).to_csv(data, index=False)
    seen: dict = {}

    def config(name, **train):
        return config_from_dict({"name": name, "output_dir": str(root / "runs"), "data": {"train": str(data)},
                                 "model": {"backbone": tiny_backbone}, "evaluate": {"baseline": False},
                                 "train": fast_train(epochs=2, eval_every_steps=2, **train)})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "render_report", lambda **kwargs: "<!doctype html><title>report</title>")
        with umask(0o027):
            store = Store(f"sqlite:///{root / 'store-027' / 'tunery.db'}")
            work = root / "runs" / "private.partial"
            with pytest.raises(KeyboardInterrupt):
                pipeline.train(config("private"), callbacks=[_StopAfterFirstCheckpoint(work)], store=store)
            seen["interrupted"] = sorted(p.name for p in (work / "checkpoints").iterdir())
            seen["private"] = pipeline.resume(work, store=store)
            seen["predictions"] = root / "out" / "predictions.csv"
            load(seen["private"]).predict_file(data, seen["predictions"])
            seen["store_027"] = root / "store-027"
            store.close()
        with umask(0o022):
            store = Store(f"sqlite:///{root / 'store-022' / 'tunery.db'}")
            seen["shared"] = pipeline.train(config("shared", keep_checkpoints=True), store=store)
            store.close()
    return seen


def test_a_run_written_under_umask_027_is_0640_and_0750_throughout(runs):
    run = runs["private"]
    assert (run / "report.html").is_file() and (run / "model" / "model.safetensors").is_file()
    assert wrong_modes(run, 0o640, 0o750) == {}
    assert stat.S_IMODE(runs["predictions"].stat().st_mode) == 0o640
    assert stat.S_IMODE(runs["predictions"].parent.stat().st_mode) == 0o750
    assert wrong_modes(runs["store_027"], 0o640, 0o750) == {}


def test_a_run_written_under_umask_022_is_0644_and_0755_checkpoints_included(runs):
    run = runs["shared"]
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last" / "trainer.pt").is_file()
    assert wrong_modes(run, 0o644, 0o755) == {}


def test_an_interrupted_run_keeps_its_checkpoints_and_a_completed_one_drops_them(runs):
    assert "last" in runs["interrupted"]  # what resume needs survived Ctrl-C
    run = runs["private"]
    assert not (run / "checkpoints").exists()
    assert (run / "model" / "model.safetensors").is_file()  # the best weights, once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["steps"] == metrics["training"]["total_steps"]


def test_keep_checkpoints_is_a_documented_train_option():
    from tunery.config import TrainConfig

    field = TrainConfig.model_fields["keep_checkpoints"]
    assert field.default is False and "checkpoints" in field.description
    assert "keep_checkpoints" in (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_and_checkpoint_weights_follow_the_umask(tmp_path, mask, expected):
    import torch

    from tunery.evaluate.report import write_report
    from tunery.rundir import write_json
    from tunery.train.checkpoint import save_tensors, save_weights

    out = tmp_path / "out"
    with umask(mask):
        out.mkdir()
        write_json(out / "a.json", {"a": 1})
        save_tensors({"w": torch.zeros(2)}, out / "w.safetensors")
        save_weights(out / "best", torch.nn.Linear(2, 2))
        write_report(out / "report.html", title="t", run_info={}, task="classification",
                     label_names=["a", "b"], metrics={}, baseline=None, predictions={}, history=[])
    assert wrong_modes(out, expected, 0o777 & ~mask) == {}
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "best", "report.html", "w.safetensors"]


# -- the store ---------------------------------------------------------------------------------


@pytest.fixture
def no_home(monkeypatch, tmp_path):
    """TUNERY_HOME and TUNERY_DB_URL unset; the user's data directory under tmp_path."""
    monkeypatch.delenv("TUNERY_HOME", raising=False)
    monkeypatch.delenv("TUNERY_DB_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "tunery"


def test_the_default_store_is_per_user_and_the_same_from_every_directory(no_home, tmp_path, monkeypatch):
    import platformdirs

    from tunery.store import Store, default_db_url

    urls = set()
    for d in ("a", "b/c"):
        (tmp_path / d).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / d)
        urls.add(default_db_url())
    assert urls == {f"sqlite:///{no_home / 'tunery.db'}"}
    assert platformdirs.user_data_path("tunery", appauthor=False) == no_home
    assert Store().location == str(no_home / "tunery.db")


def test_tunery_home_and_tunery_db_url_override_the_default(no_home, tmp_path, monkeypatch):
    from tunery.store import Store

    monkeypatch.setenv("TUNERY_HOME", str(tmp_path / "home"))
    assert Store().location == str(tmp_path / "home" / "tunery.db")
    monkeypatch.setenv("TUNERY_DB_URL", "postgresql+psycopg://tunery:secret@db.example/tunery")
    assert Store().location == "postgresql+psycopg://tunery:***@db.example/tunery"


def test_an_old_store_in_the_working_directory_is_named_not_ignored(no_home, tmp_path, caplog):
    from tunery.store import Store

    (tmp_path / ".tunery").mkdir()
    (tmp_path / ".tunery" / "tunery.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="tunery.store"):
        store = Store()
    assert store.location == str(no_home / "tunery.db")
    text = caplog.text
    assert str(tmp_path / ".tunery") in text and str(no_home) in text
    assert f"TUNERY_HOME={tmp_path / '.tunery'}" in text


def test_the_tests_store_stays_isolated(tmp_path):
    from tunery.store import Store

    assert Store().location == str(tmp_path / ".tunery" / "tunery.db")


def test_runs_list_names_the_store_on_stderr_and_keeps_json_clean(tmp_path):
    proc = cli("runs", "list", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout) == []
    assert f"store: {tmp_path / '.tunery' / 'tunery.db'}" in proc.stderr
    proc = cli("runs", "list", cwd=tmp_path)
    assert f"store: {tmp_path / '.tunery' / 'tunery.db'}" in proc.stderr


def test_a_dataframe_copy_for_fit_follows_the_umask(tmp_path):
    from tunery.api import _write

    with umask(0o027):
        assert _write(make_dataset("binary", n=10), str(tmp_path / "runs" / ".data" / "x" / "train.parquet"), "data")
    assert wrong_modes(tmp_path / "runs", 0o640, 0o750) == {}

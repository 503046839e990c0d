"""Issue 9, the Python API: fit shows progress and cleans up after itself, save() names the fix for
an existing path, the README says what predict returns."""

from __future__ import annotations

import contextlib
import io
import logging
import re

import pandas as pd
import pytest

import tunery
from tests.conftest import REPO, fast_train, make_dataset
from tunery.errors import DataError, RunError


class _Recorder:
    """A user's callback: records which hooks were called."""

    def __init__(self):
        self.events: list[str] = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.events.append(name)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_backbone):
    """One small fit with the default progress bar and a callback of the user's; stderr kept. The
    report's figures are left out: they take most of a tiny run's time and these tests never read them."""
    from tunery.evaluate import report

    out = tmp_path_factory.mktemp("newcomer-api")
    df = make_dataset("binary", n=60)
    options = {k: v for k, v in fast_train(epochs=1).items() if k != "progress"}
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=out / "runs", name="newcomer", **options)
    recorder = _Recorder()
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setattr(report, "render_report", lambda **kwargs: "<!doctype html><title>report</title>")
        clf.fit(df, text="review", label="label", callbacks=[recorder])
    return clf, stderr.getvalue(), recorder


# -- progress and callbacks -------------------------------------------------------------------------


def test_fit_shows_the_clis_progress_bar_beside_the_users_callbacks(fitted):
    clf, stderr, recorder = fitted
    assert re.search(r"train .*\b(\d+)/\1 steps", stderr), stderr  # the bar, finished
    assert "validation" in stderr
    assert recorder.events[0] == "on_train_begin" and recorder.events[-1] == "on_train_end"
    assert "on_step" in recorder.events and "on_evaluate" in recorder.events


def _failing_train(seen: dict, exc: BaseException):
    def train(cfg, *, callbacks=None, store=None):
        seen["callbacks"] = callbacks
        seen["data"] = cfg.data.train
        raise exc

    return train


@pytest.mark.parametrize("progress, bar", [(None, True), (False, False)])
def test_progress_false_turns_the_bar_off(tmp_path, monkeypatch, progress, bar):
    from tunery import pipeline
    from tunery.train.callbacks import RichProgress

    seen: dict = {}
    monkeypatch.setattr(pipeline, "train", _failing_train(seen, RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        tunery.TextClassifier(output_dir=tmp_path / "runs").fit(make_dataset("binary", n=20), progress=progress)
    assert any(isinstance(cb, RichProgress) for cb in seen["callbacks"] or []) is bar


def test_callbacks_are_documented():
    doc = tunery.TextClassifier.fit.__doc__
    assert "callbacks" in doc and "on_evaluate" in doc and "progress" in doc
    assert "callbacks=" in (REPO / "README.md").read_text(encoding="utf-8")


# -- a failed fit leaves nothing behind ----------------------------------------------------------------


def test_a_fit_refused_by_the_data_checks_leaves_no_data_copy(tmp_path, tiny_backbone):
    df = pd.DataFrame({"text": [f"the film number {i}" for i in range(30)], "label": ["positive"] * 30})
    with pytest.raises(DataError, match="only one class"):
        tunery.TextClassifier(backbone=tiny_backbone, output_dir=tmp_path / "runs", progress=False).fit(df)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("out of memory"), SystemExit(1)])
def test_any_failure_before_a_run_exists_takes_back_the_data_copy(tmp_path, monkeypatch, exc):
    from tunery import pipeline

    seen: dict = {}
    monkeypatch.setattr(pipeline, "train", _failing_train(seen, exc))
    (tmp_path / "runs").mkdir()  # the user's: stays
    with pytest.raises(type(exc)):
        tunery.TextClassifier(output_dir=tmp_path / "runs").fit(make_dataset("binary", n=20), progress=False,
                                                                 validation=make_dataset("binary", n=10, seed=1))
    assert seen["data"].endswith("train.parquet")  # the copy was written, then taken back
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_interrupted_run_keeps_the_data_copy_it_resumes_from(tmp_path, monkeypatch, caplog):
    from pathlib import Path

    from tunery import pipeline

    def interrupted(cfg, *, callbacks=None, store=None):
        work = Path(cfg.output_dir) / f"{cfg.name}.partial"
        work.mkdir(parents=True)
        (work / "config.yaml").write_text("name: x\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", interrupted)
    clf = tunery.TextClassifier(output_dir=tmp_path / "runs", name="stopped")
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        clf.fit(make_dataset("binary", n=20), progress=False)
    assert (tmp_path / "runs" / ".data" / "stopped" / "train.parquet").is_file()
    assert "tunery train --resume" in caplog.text and "stopped.partial" in caplog.text


def test_a_name_in_use_is_refused_before_its_data_copy_is_overwritten(fitted, tiny_backbone):
    clf, _, _ = fitted
    copy = clf.run_dir_.parent / ".data" / "newcomer" / "train.parquet"
    before = copy.read_bytes()
    again = tunery.TextClassifier(backbone=tiny_backbone, output_dir=clf.run_dir_.parent, name="newcomer",
                                  progress=False)
    with pytest.raises(RunError, match="already exists"):
        again.fit(make_dataset("multiclass", n=30))
    assert copy.read_bytes() == before


# -- save ------------------------------------------------------------------------------------------


def test_save_to_an_existing_path_says_what_to_do(fitted, tmp_path):
    clf, _, _ = fitted
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"already exists; choose a new path, or pass overwrite=True"):
        clf.save(tmp_path / "taken")
    with pytest.raises(FileExistsError, match="not a saved tunery model"):
        clf.save(tmp_path / "taken", overwrite=True)  # never deletes what is not a saved model
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_save_overwrite_replaces_an_earlier_save_and_an_empty_dir_is_fine(fitted, tmp_path):
    clf, _, _ = fitted
    (tmp_path / "empty").mkdir()
    assert (clf.save(tmp_path / "empty") / "tunery.json").is_file()
    saved = clf.save(tmp_path / "model")
    (saved / "stale.txt").write_text("from before")
    assert clf.save(tmp_path / "model", overwrite=True) == saved
    assert not (saved / "stale.txt").exists() and (saved / "model").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]  # no staging copy left
    assert tunery.TextClassifier.load(saved).predict(["superb"]) == clf.predict(["superb"])


# -- README ------------------------------------------------------------------------------------------


def test_readme_shows_what_load_predict_returns(fitted):
    clf, _, _ = fitted
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if re.match(r"tunery\.load\(.*\)\.predict\(\[", ln))
    comment = line.split("#", 1)[1].strip()
    result = tunery.load(clf.run_dir_).predict(["great value"])
    assert isinstance(result, list) and isinstance(result[0], dict)
    assert comment.startswith("[{") and all(f"'{key}'" in comment for key in result[0])

"""The registry and the runs commands as a new user meets them: no silent duplicate versions, a
moved run that says where it was and how to re-point it, `models delete`, `runs list` at 80
columns, `runs show` as a summary, `runs compare`."""

from __future__ import annotations

import json
import shutil

import pytest
from rich.console import Console

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config


@pytest.fixture(scope="module")
def toy_run(tiny_backbone, tmp_path_factory):
    """A completed run on the toy reviews, used read-only: one epoch, so it loses to TF-IDF
    and registering it takes --force."""
    tmp = tmp_path_factory.mktemp("registry")
    make_dataset("binary", n=240).to_csv(tmp / "reviews.csv", index=False)
    write_config(tmp / "run.yaml", {"name": "good", "data": {"train": "reviews.csv"},
                                     "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=1)})
    cli("train", "run.yaml", "--no-progress", cwd=tmp)
    return tmp / "runs" / "good"


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def _record(name, run, backbone="tiny-bert"):
    """Record `run` in this test's store under `name`, as training does."""
    from tunery.store import Store

    store = Store()
    metrics = json.loads((run / "metrics.json").read_text())["model"]
    store.start_run(name=name, path=str(run), config={"name": name, "data": {"train": "reviews.csv"}},
                    task="classification", backbone=backbone, new=True)
    store.finish_run(name, status="completed", metrics=metrics)


def test_registering_the_same_run_twice_is_refused_unless_asked(toy_run, tmp_path):
    register = ("models", "register", str(toy_run), "--name", "sentiment", "--force")
    assert "sentiment@1" in cli(*register, cwd=tmp_path).stdout
    proc = cli(*register, cwd=tmp_path, expect=1)
    message = " ".join(proc.stderr.split())
    assert "already registered as sentiment@1" in message and "--again" in message
    proc = cli(*register, "--again", cwd=tmp_path)
    assert "sentiment@2" in proc.stdout and "also registered as sentiment@1" in " ".join(proc.stderr.split())


def test_a_moved_run_says_where_it_was_and_relocate_repoints_it(toy_run, tmp_path):
    old = _copy(toy_run, tmp_path / "old" / "good")
    cli("models", "register", str(old), "--name", "sentiment", "--alias", "prod", "--force", cwd=tmp_path)
    (tmp_path / "new").mkdir()
    old.rename(tmp_path / "new" / "good")
    (tmp_path / "in.csv").write_text("review\ngreat film\nawful plot\n")

    proc = cli("predict", "sentiment:prod", "-i", "in.csv", "-o", "out.csv", cwd=tmp_path, expect=1)
    message = " ".join(proc.stderr.split())
    assert f"registered at {old}, which no longer exists" in message
    assert "tunery models relocate sentiment@1 NEW_DIR" in message and "tunery models delete sentiment@1" in message
    assert "MISSING" in cli("models", "list", cwd=tmp_path).stdout

    proc = cli("models", "relocate", "sentiment@1", "reviews.csv", cwd=tmp_path, expect=1)
    assert "not a complete run directory" in proc.stderr
    assert "sentiment@1 ->" in cli("models", "relocate", "sentiment@1", "new/good", cwd=tmp_path).stdout
    cli("predict", "sentiment:prod", "-i", "in.csv", "-o", "out.csv", cwd=tmp_path)
    (listed,) = json.loads(cli("models", "list", "--json", cwd=tmp_path).stdout)
    assert listed["run_path"] == str((tmp_path / "new" / "good").resolve()) and listed["aliases"] == ["prod"]


def test_models_delete_a_version_with_its_aliases_and_a_whole_model_only_with_yes(toy_run, tmp_path):
    cli("models", "register", str(toy_run), "--name", "sentiment", "--force", cwd=tmp_path)
    cli("models", "register", str(toy_run), "--name", "sentiment", "--force", "--again", "--alias", "prod",
        cwd=tmp_path)
    proc = cli("models", "delete", "sentiment@2", cwd=tmp_path)
    assert "deleted sentiment@2 (aliases prod removed)" in proc.stdout and str(toy_run) in proc.stdout
    assert toy_run.is_dir()
    assert [m["ref"] for m in json.loads(cli("models", "list", "--json", cwd=tmp_path).stdout)] == ["sentiment@1"]
    assert "no alias 'prod'" in cli("predict", "sentiment:prod", "-i", "x.csv", "-o", "y.csv", cwd=tmp_path,
                                    expect=1).stderr
    assert "is an alias" in cli("models", "delete", "sentiment:prod", cwd=tmp_path, expect=1).stderr
    assert "has no version 5" in cli("models", "delete", "sentiment@5", cwd=tmp_path, expect=1).stderr

    proc = cli("models", "delete", "sentiment", cwd=tmp_path, expect=1)
    assert "--yes" in proc.stderr and "sentiment@1" in proc.stderr
    assert "deleted sentiment@1" in cli("models", "delete", "sentiment", "--yes", cwd=tmp_path).stdout
    assert json.loads(cli("models", "list", "--json", cwd=tmp_path).stdout) == []


@pytest.fixture
def narrow(monkeypatch):
    """The CLI's stdout as an 80-column terminal."""
    import tunery.cli

    monkeypatch.setattr(tunery.cli, "out", Console(width=80, no_color=True))


def test_runs_list_at_80_columns_keeps_the_name_whole_and_shows_the_baseline(toy_run, tmp_path, narrow):
    name = "reviews-waimai-minilm-l6-lr3e-5-20261202-071500"
    _record(name, toy_run, backbone="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2")
    proc = cli("runs", "list", cwd=tmp_path)
    assert name in proc.stdout and max(map(len, proc.stdout.splitlines())) <= 80
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert "baseline" in proc.stdout and f"{metrics['baseline']['test']['accuracy']:.4f}" in proc.stdout
    assert f"accuracy {metrics['model']['test']['accuracy']:.4f}" in proc.stdout


def test_runs_show_is_a_summary_and_json_gives_the_record(toy_run, tmp_path):
    _record("good", toy_run)
    proc = cli("runs", "show", "good", cwd=tmp_path)
    text = " ".join(proc.stdout.split())
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)
    verdict = json.loads((toy_run / "metrics.json").read_text())["verdict"]
    for part in ("good (completed)", str(toy_run), "tiny-bert", "reviews.csv", "accuracy (selection metric)",
                 "baseline", verdict["summary"], "report.html"):
        assert part in text, part
    assert json.loads(cli("runs", "show", "good", "--json", cwd=tmp_path).stdout)["path"] == str(toy_run)


def test_runs_compare_shows_metrics_and_baselines_side_by_side(toy_run, tmp_path):
    other = _copy(toy_run, tmp_path / "runs" / "other")
    doc = json.loads((other / "metrics.json").read_text())
    doc["model"]["test"]["accuracy"] = 0.5  # a worse run beside the good one
    (other / "metrics.json").write_text(json.dumps(doc))
    _record("good", toy_run)
    _record("other", other)
    proc = cli("runs", "compare", "good", "other", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert any("good" in line and "other" in line for line in lines)
    accuracy = next(line for line in lines if line.strip("│ ").startswith("accuracy"))
    assert "0.5000" in accuracy
    assert any(line.strip("│ ").startswith("baseline accuracy") for line in lines)
    result = json.loads(cli("runs", "compare", "good", "other", "--json", cwd=tmp_path).stdout)
    assert result["split"] == "test" and [r["name"] for r in result["runs"]] == ["good", "other"]
    assert result["runs"][1]["model"]["accuracy"] == 0.5 and result["runs"][0]["baseline"]["accuracy"] is not None
    assert "at least two runs" in cli("runs", "compare", "good", cwd=tmp_path, expect=1).stderr
    assert "did you mean 'other'" in cli("runs", "compare", "good", "othr", cwd=tmp_path, expect=1).stderr

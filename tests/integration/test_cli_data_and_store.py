"""Bad data stops the CLI with a clear message and writes nothing; runs and the model registry."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config


def _bad_files(tmp_path):
    good = make_dataset("binary", n=120)
    empty = good.copy()
    empty.loc[[3, 7], "review"] = ""
    missing = good.copy()
    missing.loc[[5], "label"] = None
    evalf = good.head(20).copy()
    evalf.loc[[2], "label"] = "neutral"
    (tmp_path / "eval_unseen.csv").write_text(evalf.to_csv(index=False))
    raw = good.to_csv(index=False).encode()
    lines = raw.split(b"\n")
    lines[4] = lines[4].replace(b"the", b"th\xff\xfe", 1) if b"the" in lines[4] else b"caf\xe9 ok,positive"
    return {
        "empty_text": ("empty.csv", empty.to_csv(index=False).encode(), [], "rows 4, 8"),
        "missing_label": ("missing.csv", missing.to_csv(index=False).encode(), [], "row 6"),
        "undecodable": ("bytes.csv", b"\n".join(lines), [], "row 4"),
        "unseen_label": ("train.csv", raw, ["--test", str(tmp_path / "eval_unseen.csv")], "neutral"),
    }


@pytest.mark.parametrize("code", ["empty_text", "missing_label", "undecodable", "unseen_label"])
def test_bad_data_fails_validate_and_train_writing_nothing(code, tmp_path, tiny_backbone):
    name, content, extra, where = _bad_files(tmp_path)[code]
    (tmp_path / name).write_bytes(content)
    proc = cli("validate", name, *extra, cwd=tmp_path, expect=1)
    assert f"[{code}]" in proc.stdout and name in proc.stdout and where in proc.stdout and "FAILED" in proc.stdout

    data = {"train": name}
    if extra:
        data["test"] = extra[1]
    write_config(tmp_path / "run.yaml", {"name": "bad", "data": data, "model": {"backbone": tiny_backbone},
                                          "train": fast_train()})
    proc = cli("train", "run.yaml", "--no-progress", cwd=tmp_path, expect=1)
    assert "error" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    assert json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout) == []


def test_warnings_are_shown_and_recorded_in_the_run(tmp_path, tiny_backbone):
    df = make_dataset("binary", n=200)
    df = pd.concat([df, df.head(5)])  # exact duplicates: a warning, not an error
    df.to_csv(tmp_path / "dups.csv", index=False)
    proc = cli("validate", "dups.csv", cwd=tmp_path)
    assert "[duplicate]" in proc.stdout and "OK" in proc.stdout
    write_config(tmp_path / "run.yaml", {"name": "dups", "data": {"train": "dups.csv"},
                                          "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=1)})
    cli("train", "run.yaml", "--no-progress", cwd=tmp_path)
    report = json.loads((tmp_path / "runs" / "dups" / "data_report.json").read_text())
    assert "duplicate" in [f["code"] for f in report["findings"]]


def test_unknown_config_key_exits_with_the_closest_key(tmp_path):
    (tmp_path / "run.yaml").write_text("data:\n  train: x.csv\ntrain:\n  epoch: 3\n")
    proc = cli("train", "run.yaml", cwd=tmp_path, expect=1)
    assert "did you mean 'train.epochs'" in proc.stderr


def test_runs_and_model_registry(tmp_path, tiny_backbone):
    make_dataset("binary", n=200).to_csv(tmp_path / "reviews.csv", index=False)
    write_config(tmp_path / "run.yaml", {"data": {"train": "reviews.csv"}, "model": {"backbone": tiny_backbone},
                                          "train": fast_train(epochs=3)})
    cli("train", "run.yaml", "--no-progress", "--set", "name=first", cwd=tmp_path)
    cli("train", "run.yaml", "--no-progress", "--set", "name=second", cwd=tmp_path)

    runs = json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout)
    assert [r["name"] for r in runs] == ["second", "first"] and {r["status"] for r in runs} == {"completed"}
    shown = json.loads(cli("runs", "show", "first", "--json", cwd=tmp_path).stdout)
    assert shown["metrics"]["test"]["accuracy"] is not None and shown["config"]["name"] == "first"
    assert "did you mean 'first'" in cli("runs", "show", "frist", cwd=tmp_path, expect=1).stderr

    # --force: the tiny toy model loses to TF-IDF on 20 test rows (tests/test_newcomer_verdict.py)
    assert "sentiment@1" in cli("models", "register", "runs/first", "--name", "sentiment", "--force",
                                cwd=tmp_path).stdout
    assert "sentiment@2" in cli("models", "register", "second", "--name", "sentiment", "--alias", "prod", "--force",
                                cwd=tmp_path).stdout
    cli("models", "alias", "sentiment", "prod", "1", cwd=tmp_path)
    models = json.loads(cli("models", "list", "--json", cwd=tmp_path).stdout)
    assert [(m["version"], m["aliases"]) for m in models] == [(1, ["prod"]), (2, [])]

    for ref in ("sentiment", "sentiment@1", "sentiment:prod"):
        out = tmp_path / f"p-{ref.replace(':', '_').replace('@', '_')}.csv"
        cli("predict", ref, "--input", "reviews.csv", "--output", str(out), cwd=tmp_path)
        assert len(pd.read_csv(out)) == 200
    assert "no version 7" in cli("predict", "sentiment@7", "-i", "reviews.csv", "-o", "x.csv", cwd=tmp_path,
                                 expect=1).stderr

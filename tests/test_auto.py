"""tunery auto: the choice rules as plain functions (objective, backbone by budget, winner), then one
search through the CLI on the toy data with the tiny backbone (module-scoped: the TF-IDF baseline and
two trials), the Python API, and the budget spent before any search."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli
from tunery.automl import FITS, Candidate, backbone_estimates, choose_backbone, choose_metric, choose_winner


# -- the choice rules ------------------------------------------------------------------------------
def test_the_objective_is_accuracy_unless_classes_are_imbalanced():
    assert choose_metric("classification", [500, 500]) == "accuracy"
    assert choose_metric("classification", [600, 400]) == "accuracy"  # 1.5 times
    assert choose_metric("classification", [700, 300]) == "macro_f1"  # 2.3 times: accuracy rewards ignoring 300
    assert choose_metric("classification", [50, 400, 550]) == "macro_f1"
    assert choose_metric("multilabel", [900, 10]) == "micro_f1"
    assert choose_metric("regression") == "rmse"


def test_the_largest_backbone_that_trains_on_enough_examples_in_the_time_left_is_chosen():
    from tunery.automl import BUDGET_MARGIN, MIN_SAMPLES

    estimates = {"small": 60.0, "base": 250.0, "large": 2000.0}  # one default run: 3 epochs of 1,000 rows
    # "large" would train on 3,000 x 800 x 0.8 / 2,000 = 960 examples, fewer than the 1,000 rows once ...
    alias, why = choose_backbone(estimates, 800, n_train=1000, epochs=3)
    assert alias == "base" and "a search needs" in why  # ... and base's 250 s fit 3.2 times into 800 s
    # given 1,700 s "large" trains on 2,040, every row twice: a larger model trained shorter
    alias, why = choose_backbone(estimates, 1700, n_train=1000, epochs=3)
    assert alias == "large" and "trained shorter" in why
    # on a large set the bar is MIN_SAMPLES examples, not one pass: 100,000 rows x 3 epochs in 2,000 s
    big = {"small": 600.0, "base": 2500.0, "large": 20000.0}
    need_s = MIN_SAMPLES / 300_000 * 20000 / BUDGET_MARGIN  # the time "large" needs for MIN_SAMPLES examples
    assert choose_backbone(big, need_s * 1.01, n_train=100_000, epochs=3)[0] == "large"
    assert choose_backbone(big, need_s * 0.99, n_train=100_000, epochs=3)[0] == "base"
    # a backbone's overhead (loading, final evaluations) comes off its time first
    assert choose_backbone(estimates, 1700, n_train=1000, epochs=3, overheads={"large": 900.0})[0] == "base"
    alias, why = choose_backbone(estimates, 10, n_train=1000, epochs=3)  # none trains on enough: the smallest
    assert alias == "small" and "smallest" in why and "deadline" in why
    assert choose_backbone({"small": 60.0, "base": None}, 10_000, n_train=1000, epochs=3)[0] == "small"  # not probed
    with pytest.raises(Exception, match="no backbone could be measured"):
        choose_backbone({"small": None}, 900, n_train=1000, epochs=3)


def test_a_large_backbone_is_probed_only_when_its_size_could_train_it_on_enough_examples(monkeypatch):
    import tunery.backbones as backbones
    import tunery.probe as probe

    probed = []

    def fake_estimate(alias, n_tokens, epochs, *, n_eval_tokens=0):
        probed.append(alias)
        return {"minilm-l6": 100.0, "mpnet-base": 480.0}[alias]

    monkeypatch.setattr(probe, "estimated_seconds", fake_estimate)
    monkeypatch.setattr(backbones, "is_installed", lambda alias: True)
    # MiniLM 100 s, so mpnet-base (4.8x the parameters) about 480 s for 3 epochs of 1,000 rows: in 100 s it
    # would train on 3,000 x 100 x 0.8 / 480 = 500 examples, fewer than the 1,000 rows once
    assert backbone_estimates(["mpnet-base", "minilm-l6"], 1e5, 1e4, 3, 100, n_train=1000) == {
        "minilm-l6": 100.0, "mpnet-base": None}
    assert probed == ["minilm-l6"]
    assert backbone_estimates(["minilm-l6", "mpnet-base"], 1e5, 1e4, 3, 300, n_train=1000) == {
        "minilm-l6": 100.0, "mpnet-base": 480.0}
    monkeypatch.setattr(backbones, "is_installed", lambda alias: alias == "minilm-l6")
    assert backbone_estimates(["minilm-l6", "mpnet-base"], 1e5, 1e4, 3, 3000, n_train=1000)["mpnet-base"] is None
    assert FITS >= 2


def test_a_recipe_longer_than_the_budget_is_shortened_to_fit_it():
    from tunery.automl import BUDGET_MARGIN, MIN_EPOCHS, fit_epochs

    assert fit_epochs(3, estimate_s=300, time_s=900) is None  # fits: unchanged
    assert fit_epochs(3, estimate_s=900 * BUDGET_MARGIN, time_s=900) is None
    assert fit_epochs(3, estimate_s=1800, time_s=900) == pytest.approx(3 * 900 * BUDGET_MARGIN / 1800, abs=0.01)
    assert fit_epochs(3, estimate_s=1e6, time_s=60) == MIN_EPOCHS


def _c(name, value, state="complete", kind="model"):
    return Candidate(name, kind, "tfidf" if kind == "baseline" else "tiny", state, value, 1.0)


def test_the_winner_is_best_on_validation_and_a_tie_keeps_the_model():
    trials = [_c("trial 0", 0.80), _c("trial 1", 0.85), _c("trial 2", 0.99, state="pruned"), _c("trial 3", None)]
    assert choose_winner([*trials, _c("tfidf baseline", 0.84, kind="baseline")], "maximize").name == "trial 1"
    assert choose_winner([*trials, _c("tfidf baseline", 0.90, kind="baseline")], "maximize").kind == "baseline"
    assert choose_winner([*trials, _c("tfidf baseline", 0.85, kind="baseline")], "maximize").name == "trial 1"
    assert choose_winner([_c("trial 0", 0.3), _c("trial 1", 0.2), _c("b", 0.25, kind="baseline")],
                         "minimize").name == "trial 1"
    assert choose_winner([_c("trial 0", math.nan), _c("b", 0.5, kind="baseline")], "maximize").kind == "baseline"
    assert choose_winner([_c("trial 0", None, state="fail")], "maximize") is None


# -- one real search -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(tiny_backbone, tmp_path_factory):
    """`tunery auto` on 240 toy reviews: the tiny backbone fixed, 2 trials, a generous budget."""
    import os

    import yaml

    home = tmp_path_factory.mktemp("auto")
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home / ".tunery")
    try:
        make_dataset("binary", n=240).to_csv(home / "reviews.csv", index=False)
        (home / "auto.yaml").write_text(yaml.safe_dump({"data": {"train": "reviews.csv"},
                                                        "model": {"backbone": tiny_backbone},
                                                        "train": fast_train(epochs=2)}))
        proc = cli("auto", "auto.yaml", "--budget", "10m", "--trials", "2", "--name", "toy", "--output-dir",
                   str(home / "runs"), cwd=home, timeout=600)
    finally:
        if old is None:
            os.environ.pop("TUNERY_HOME", None)
        else:
            os.environ["TUNERY_HOME"] = old
    return {"home": home, "stdout": proc.stdout, "doc": json.loads((home / "runs" / "toy" / "auto.json").read_text())}


def test_auto_keeps_the_candidate_best_on_validation_and_scores_it_on_test(searched):
    doc, stdout = searched["doc"], searched["stdout"]
    board = doc["leaderboard"]
    names = sorted(c["name"] for c in board if not c["name"].startswith("soup of trials"))
    assert names == ["tfidf baseline", "trial 0", "trial 1"] and len(board) <= 4
    assert doc["task"] == "classification" and doc["metric"] == "accuracy"  # 120/120: balanced
    assert "set in the config" in doc["backbone_reason"]
    complete = [c for c in board if c["state"] == "complete"]
    best = max(c["validation"] for c in complete)
    assert doc["best_validation"] == best
    chosen = next(c for c in board if c["run_dir"] == doc["best_run"])
    assert chosen["validation"] == best and doc["kind"] == chosen["kind"]
    metrics = json.loads((searched["home"] / "runs" / "toy" / doc["best_run"].rsplit("/", 1)[-1] /
                          "metrics.json").read_text())
    assert doc["test"] == metrics["model"]["test"] and "accuracy" in doc["test"]
    assert doc["baseline_test"] is not None
    assert doc["wall_seconds"] <= doc["budget_seconds"]
    for word in ("leaderboard", "tfidf baseline", "trial 0", "objective: validation accuracy", "summary:"):
        assert word in stdout, word


def test_every_candidate_is_a_run_and_the_chosen_one_predicts(searched):
    import tunery

    doc = searched["doc"]
    for c in doc["leaderboard"]:
        assert (tunery_json := __import__("pathlib").Path(c["run_dir"]) / "tunery.json").is_file(), tunery_json
    predictor = tunery.load(doc["best_run"])
    out = predictor.predict(["great film", "awful plot"])
    assert [o["label"] for o in out] == ["positive", "negative"]
    trials = [c for c in doc["leaderboard"] if c["name"].startswith("trial")]
    assert all(c["params"] for c in trials) and {"train.lr", "train.epochs"} <= set(trials[0]["params"])
    kept = [c for c in doc["leaderboard"] if (__import__("pathlib").Path(c["run_dir"]) / "model").is_dir()]
    assert doc["best_run"] in [c["run_dir"] for c in kept] and len(kept) <= 3  # the chosen, the best trial, tfidf


def test_the_python_api_returns_a_fitted_classifier(tiny_backbone, tmp_path):
    import tunery

    df = make_dataset("binary", n=200)
    clf = tunery.auto(df, text="review", label="label", budget="10m", trials=1, backbone=tiny_backbone,
                      output_dir=tmp_path / "runs", name="api", **fast_train(epochs=2))
    assert clf.predict(["wonderful acting", "dreadful story"]) == ["positive", "negative"]
    result = clf.auto_
    assert sorted(c.name for c in result.leaderboard) == ["tfidf baseline", "trial 0"]
    assert clf.run_dir_ == result.best_run and result.summary.is_file()


def test_a_budget_spent_before_the_search_returns_the_baseline(tiny_backbone, tmp_path, caplog):
    """The clock jumps past the deadline once the baseline is fitted: no study starts, the baseline
    is the answer, and the warning says why."""
    from tunery.automl import run_auto
    from tunery.config import config_from_dict

    make_dataset("binary", n=200).to_csv(tmp_path / "r.csv", index=False)
    cfg = config_from_dict({"output_dir": str(tmp_path / "runs"), "data": {"train": str(tmp_path / "r.csv")},
                            "model": {"backbone": tiny_backbone}, "train": fast_train()}, source="test")
    ticks = iter([1000.0])  # the start; every later reading is past the deadline
    result = run_auto(cfg, budget_s=60, name="late", clock=lambda: next(ticks, 1061.0))
    assert result.kind == "baseline" and result.study is None
    assert [c.name for c in result.leaderboard] == ["tfidf baseline"]
    assert "no time left for a search" in caplog.text


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    make_dataset("binary", n=100).to_csv(tmp_path / "r.csv", index=False)
    proc = cli("auto", "r.csv", "--budget", "10m", "--metric", "rmse", cwd=tmp_path, expect=1)
    assert "'rmse' is not a classification metric" in proc.stderr and "accuracy" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = cli("auto", "r.csv", "--budget", "ten minutes", cwd=tmp_path, expect=1)
    assert "is not a duration" in proc.stderr
    proc = cli("auto", "missing.csv", "--budget", "1m", cwd=tmp_path, expect=1)
    assert "not found" in proc.stderr

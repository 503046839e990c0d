"""A model that loses to its baseline gets a verdict: decided with a noise margin (a tie is not a
loss), written into metrics.json and evaluate's result, printed by train and evaluate, and
`tunery models register` refuses such a run unless --force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config
from tunery.evaluate.verdict import compare_to_baseline, likely_causes, make_verdict, verdict_line

VERDICT_KEYS = {"beats_baseline", "split", "metric", "model", "baseline", "margin", "summary", "causes"}


def _probs(y: np.ndarray, correct: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Class probabilities that predict y where `correct`, another class elsewhere."""
    pred = np.where(correct, y, (y + 1) % n_classes)
    probs = np.full((len(y), n_classes), 0.1 / (n_classes - 1))
    probs[np.arange(len(y)), pred] = 0.9
    return probs


def _classification(n: int, model_right: int, base_right: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    model = np.zeros(n, bool)
    model[rng.permutation(n)[:model_right]] = True
    base = np.zeros(n, bool)
    base[rng.permutation(n)[:base_right]] = True
    return y, _probs(y, model), _probs(y, base)


def test_a_clear_loss_on_many_rows_is_a_loss():
    y, model, base = _classification(600, model_right=420, base_right=540)
    c = compare_to_baseline("classification", "accuracy", y, model, base, label_names=["a", "b"])
    assert (c["model"], c["baseline"]) == (pytest.approx(0.70), pytest.approx(0.90))
    assert c["outcome"] == "worse" and 0 < c["margin"] < 0.2
    v = make_verdict("test", c, [{"code": "vocabulary", "message": "vocabulary coverage: 66 % [UNK]"}])
    assert VERDICT_KEYS <= set(v) and v["beats_baseline"] is False
    assert v["summary"].startswith("The model does NOT beat the TF-IDF baseline on test: accuracy 0.700 vs 0.900")
    assert "Likely causes: vocabulary coverage" in verdict_line(v)


def test_a_small_gap_on_a_small_test_set_is_a_tie_not_a_loss():
    y, model, base = _classification(30, model_right=25, base_right=27)
    c = compare_to_baseline("classification", "accuracy", y, model, base, label_names=["a", "b"])
    assert c["model"] < c["baseline"] and c["outcome"] == "tie"
    v = make_verdict("test", c, [])
    assert v["beats_baseline"] is True and "NOT" not in v["summary"] and "level with" in v["summary"]


def test_a_clear_win_drops_the_causes():
    y, model, base = _classification(600, model_right=570, base_right=480)
    c = compare_to_baseline("classification", "macro_f1", y, model, base, label_names=["a", "b"])
    v = make_verdict("test", c, [{"code": "imbalance", "message": "x"}])
    assert v["outcome"] == "better" and v["beats_baseline"] and v["causes"] == []


def test_lower_is_better_metrics_and_metrics_without_a_fast_path():
    rng = np.random.default_rng(1)
    y = rng.normal(size=400)
    good, bad = y + rng.normal(scale=0.1, size=400), y + rng.normal(scale=1.0, size=400)
    assert compare_to_baseline("regression", "rmse", y, bad, good, label_names=[])["outcome"] == "worse"
    assert compare_to_baseline("regression", "rmse", y, good, bad, label_names=[])["outcome"] == "better"
    yc, model, base = _classification(200, model_right=100, base_right=190)
    c = compare_to_baseline("classification", "roc_auc", yc, model, base, label_names=["a", "b"],
                            n_resamples=50)
    assert c["outcome"] == "worse" and "resamples" in c["method"]


def test_likely_causes_come_from_the_data_report_and_the_learning_curve():
    report = {"findings": [
        {"code": "vocabulary", "severity": "error", "message": "66 % [UNK]",
         "details": {"unk_token_share": 0.662, "unk_text_share": 1.0, "scripts": {"Han": 0.97},
                     "backbone_languages": "en"}},
        {"code": "truncation", "severity": "warning", "message": "long texts"}],
        "summary": {"label_counts": {"train": {"negative": 40, "positive": 600}}}}
    still_improving = [{"step": 10, "loss": 0.69}, {"step": 20, "loss": 0.5},
                       {"step": 10, "split": "validation", "accuracy": 0.6},
                       {"step": 20, "split": "validation", "accuracy": 0.7}]
    causes = likely_causes(data_report=report, history=still_improving, metric="accuracy")
    assert [c["code"] for c in causes] == ["vocabulary", "few_rows_per_class", "still_improving"]
    assert "66.2 %" in causes[0]["message"] and "covers en" in causes[0]["message"]
    assert "'negative' has 40 training rows" in causes[1]["message"]

    diverged = [{"step": 10, "loss": 0.69}, {"step": 20, "loss": 2.5},
                {"step": 10, "split": "validation", "accuracy": 0.5},
                {"step": 20, "split": "validation", "accuracy": 0.5}]
    collapsed = {"confusion_matrix": [[10, 0], [12, 0]]}
    codes = [c["code"] for c in likely_causes(history=diverged, metric="accuracy", model_metrics=collapsed,
                                              label_names=["neg", "pos"])]
    assert codes == ["one_class", "loss_not_falling", "flat_curve"]


# -- end to end: one run that cannot learn (lr ~ 0) loses to TF-IDF on the toy data ---------------


@pytest.fixture(scope="module")
def losing_run(tiny_backbone, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("losing")
    make_dataset("binary", n=240).to_csv(tmp / "reviews.csv", index=False)
    write_config(tmp / "run.yaml", {"name": "loser", "data": {"train": "reviews.csv"},
                                     "model": {"backbone": tiny_backbone},
                                     "train": fast_train(epochs=1, lr=1e-9)})
    proc = cli("train", "run.yaml", "--no-progress", cwd=tmp)
    return tmp, proc


def test_training_writes_and_prints_the_verdict(losing_run):
    tmp, proc = losing_run
    metrics = json.loads((tmp / "runs" / "loser" / "metrics.json").read_text())
    v = metrics["verdict"]
    assert VERDICT_KEYS <= set(v) and v["beats_baseline"] is False and v["split"] == "test"
    assert v["metric"] == metrics["metric"] == "accuracy"
    assert v["model"] == pytest.approx(metrics["model"]["test"]["accuracy"])
    assert v["baseline"] == pytest.approx(metrics["baseline"]["test"]["accuracy"])
    assert v["model"] < v["baseline"] - v["margin"] and v["causes"]
    assert all(set(c) == {"code", "message"} for c in v["causes"])
    text = " ".join(proc.stdout.split())
    assert "The model does NOT beat the TF-IDF baseline on test: accuracy" in text and "Likely causes:" in text


def test_evaluate_prints_the_verdict_and_returns_it_in_json(losing_run):
    tmp, _ = losing_run
    text = " ".join(cli("evaluate", "runs/loser", cwd=tmp).stdout.split())
    assert "The model does NOT beat the TF-IDF baseline on test" in text
    result = json.loads(cli("evaluate", "runs/loser", "--json", cwd=tmp).stdout)
    assert result["verdict"]["beats_baseline"] is False and VERDICT_KEYS <= set(result["verdict"])
    saved = json.loads((tmp / "runs" / "loser" / "evaluations" / "test" / "metrics.json").read_text())
    assert saved["verdict"]["summary"] == result["verdict"]["summary"]


def test_register_refuses_a_run_that_loses_unless_forced(losing_run):
    tmp, _ = losing_run
    proc = cli("models", "register", "runs/loser", "--name", "sentiment", cwd=tmp, expect=1)
    message = " ".join(proc.stderr.split())
    assert "does not beat its baseline" in message and "--force" in message and "accuracy" in message
    assert json.loads(cli("models", "list", "--json", cwd=tmp).stdout) == []
    proc = cli("models", "register", "runs/loser", "--name", "sentiment", "--force", cwd=tmp)
    assert "sentiment@1" in proc.stdout and "loses to its baseline" in " ".join(proc.stderr.split())


@pytest.mark.parametrize(("task", "metrics"), [
    ("classification", ["accuracy", "micro_f1", "macro_f1", "weighted_f1", "log_loss", "per_class.b.recall"]),
    ("multilabel", ["micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy", "per_class.c.f1"]),
    ("regression", ["mse", "rmse", "mae", "r2"]),
])
def test_the_bootstrap_sums_give_the_reported_metric_on_all_rows(task, metrics):
    """Each resample is a weighted sum of per-row figures: with every weight 1 it must be the
    metric metrics.json reports."""
    from tunery.evaluate.metrics import compute_metrics, metric_value
    from tunery.evaluate.verdict import _row_stats

    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    if task == "classification":
        y, scores = rng.integers(0, 3, 200), rng.dirichlet([1, 1, 1], 200)
    elif task == "multilabel":
        y, scores = (rng.random((200, 3)) < 0.4).astype(int), rng.random((200, 3))
    else:
        y, scores, names = rng.normal(size=200), rng.normal(size=200), []
    reported = compute_metrics(task, y, scores, names, threshold=0.4)
    for metric in metrics:
        S, value = _row_stats(task, metric, y, scores, 0.4, names)
        assert value(S.sum(axis=0)[None], np.array([200.0]))[0] == pytest.approx(metric_value(reported, metric))

import json
import math

import numpy as np
import pytest

from tunery.errors import ConfigError
from tunery.evaluate import errors
from tunery.evaluate.metrics import (
    classification_metrics,
    compute_metrics,
    default_metric,
    greater_is_better,
    metric_value,
    multilabel_metrics,
    regression_metrics,
    reliability,
    tune_threshold,
)

NAMES2 = ["neg", "pos"]


def _probs(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def test_binary_confusion_matrix_and_f1_match_hand_counts():
    # true: 0 0 1 1 1 ; pred: 0 1 1 1 0  -> TN=1 FP=1 FN=1 TP=2
    m = classification_metrics([0, 0, 1, 1, 1], _probs([0.2, 0.7, 0.9, 0.6, 0.4]), NAMES2)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["pos"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                     "f1": pytest.approx(2 / 3), "support": 3}
    assert m["per_class"]["neg"]["f1"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3) / 5)
    assert m["micro_f1"] == pytest.approx(3 / 5)


def test_binary_auc_and_log_loss_match_hand_values():
    y = [0, 0, 1, 1]
    m = classification_metrics(y, _probs([0.1, 0.6, 0.4, 0.8]), NAMES2)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)
    expected = -np.mean(np.log([0.9, 0.4, 0.4, 0.8]))
    assert m["log_loss"] == pytest.approx(expected)


def test_perfect_predictions_score_one_and_zero():
    y = [0, 1, 2, 1]
    P = np.eye(3)[y]
    m = classification_metrics(y, P, ["a", "b", "c"])
    assert m["accuracy"] == m["macro_f1"] == m["roc_auc"] == 1.0
    assert m["ece"] == pytest.approx(0.0)
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-9)


def test_ece_for_known_case():
    # all confidence 0.8; 3 of 5 right -> one bin, |0.6 - 0.8| = 0.2
    r = reliability(np.full(5, 0.8), np.array([1, 1, 1, 0, 0]), bins=10)
    assert r["ece"] == pytest.approx(0.2)
    assert r["reliability"]["bin_count"][7] == 5  # (0.7, 0.8]
    assert r["reliability"]["bin_accuracy"][7] == pytest.approx(0.6)
    assert r["reliability"]["bin_confidence"][0] is None


def test_ece_weights_bins_by_count():
    # bin A: conf 0.95, 2 examples both right (gap 0.05); bin B: conf 0.55, 2 examples, 0 right (gap 0.55)
    r = reliability(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 1, 0, 0]), bins=10)
    assert r["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)


def test_one_class_present_gives_none_auc_and_valid_json():
    m = classification_metrics([1, 1, 1], _probs([0.9, 0.8, 0.3]), NAMES2)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    text = json.dumps(m, allow_nan=False)
    assert "NaN" not in text


def test_multiclass_auc_is_macro_over_present_classes_and_json():
    y = [0, 1, 1]  # class 2 absent
    P = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(y, P, ["a", "b", "c"])
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["support"] == 0
    json.dumps(m, allow_nan=False)
    assert all(type(v) in (float, int, type(None)) for k, v in m.items()
               if k not in ("per_class", "confusion_matrix", "reliability"))


def test_multilabel_metrics_match_hand_counts():
    Y = np.array([[1, 0], [1, 1], [0, 0]])
    P = np.array([[0.9, 0.6], [0.4, 0.8], [0.1, 0.2]])
    # pred: [1,1] [0,1] [0,0] -> label a: tp1 fn1; label b: tp1 fp1
    m = multilabel_metrics(Y, P, ["a", "b"], threshold=0.5)
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 6)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
    assert m["threshold"] == 0.5
    json.dumps(m, allow_nan=False)


def test_multilabel_accepts_per_label_threshold():
    Y = np.array([[1, 0], [0, 1]])
    P = np.array([[0.3, 0.6], [0.1, 0.9]])
    m = multilabel_metrics(Y, P, ["a", "b"], threshold=np.array([0.25, 0.7]))
    assert m["micro_f1"] == 1.0
    assert m["threshold"] == [0.25, 0.7]


def test_regression_metrics_match_hand_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 2.0, 3.0, 6.0])  # monotone, one error of 2
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_regression_constant_prediction_gives_none_correlation():
    m = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert m["pearson"] is None and m["spearman"] is None
    assert m["r2"] == pytest.approx(0.0)
    json.dumps(m, allow_nan=False)


def test_tune_threshold_finds_the_separating_threshold():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    P = np.array([[0.3, 0.1], [0.25, 0.15], [0.1, 0.35], [0.15, 0.12]])
    t = tune_threshold(Y, P)
    assert 0.15 < t <= 0.25
    assert multilabel_metrics(Y, P, ["a", "b"], threshold=t)["micro_f1"] == 1.0


def test_tune_threshold_prefers_half_on_ties():
    Y = np.array([[1], [0]])
    P = np.array([[0.99], [0.01]])
    assert tune_threshold(Y, P) == 0.5


def test_compute_metrics_dispatches_and_rejects_unknown_task():
    assert "rmse" in compute_metrics("regression", [1.0, 2.0], [1.0, 2.0], [])
    assert "hamming_loss" in compute_metrics("multilabel", [[1]], [[0.9]], ["a"])
    with pytest.raises(ValueError, match="ranking"):
        compute_metrics("ranking", [1], [1], [])


def test_default_metric_and_direction():
    assert default_metric("classification") == "accuracy"
    assert default_metric("multilabel") == "micro_f1"
    assert default_metric("regression") == "rmse"
    for name in ("loss", "eval_loss", "log_loss", "mse", "rmse", "mae", "hamming_loss", "ece"):
        assert not greater_is_better(name), name
    for name in ("accuracy", "macro_f1", "roc_auc", "r2", "spearman"):
        assert greater_is_better(name), name


def test_metric_value_reads_values_and_names_valid_ones_on_error():
    m = classification_metrics([0, 1], _probs([0.2, 0.9]), NAMES2)
    assert metric_value(m, "accuracy") == 1.0
    assert metric_value(m, "per_class.pos.f1") == 1.0
    with pytest.raises(ConfigError, match="did you mean 'accuracy'.*macro_f1"):
        metric_value(m, "acuracy")
    assert math.isnan(metric_value(classification_metrics([1], _probs([0.9]), NAMES2), "roc_auc"))


def test_most_confident_mistakes_orders_by_confidence():
    texts = ["a", "b", "c", "d"]
    P = _probs([0.9, 0.2, 0.6, 0.99])  # true: 0 0 1 0 -> mistakes: a (0.9), d (0.99)
    out = errors.most_confident_mistakes("classification", texts, [0, 0, 1, 0], P, NAMES2, n=5)
    assert [m["text"] for m in out] == ["d", "a"]
    assert out[0]["predicted"] == "pos" and out[0]["true"] == "neg"
    assert out[0]["confidence"] == pytest.approx(0.99)
    json.dumps(out)


def test_largest_regression_errors_first():
    out = errors.most_confident_mistakes("regression", ["a", "b", "c"], [1.0, 2.0, 3.0],
                                         [1.1, 5.0, 2.0], [], n=2)
    assert [m["text"] for m in out] == ["b", "c"]
    assert out[0]["error"] == pytest.approx(3.0)


def test_multilabel_mistakes_name_the_wrong_label():
    out = errors.most_confident_mistakes("multilabel", ["x", "y"], [[1, 0], [0, 1]],
                                         [[0.9, 0.95], [0.2, 0.7]], ["a", "b"], n=5)
    assert len(out) == 1 and out[0]["wrong"] == "b"
    assert out[0]["confidence"] == pytest.approx(0.95)
    assert out[0]["predicted"] == ["a", "b"]

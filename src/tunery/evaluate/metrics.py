"""Metrics as pure functions on numpy arrays.

Every result is JSON-serialisable as is: plain floats, ints, lists and dicts, never numpy types;
an undefined value (ROC AUC with one class present, Pearson of a constant) is `None`, not NaN.

Data contract for the predictions of one split:

- classification: `y_true` int (N,), `probs` float (N, C) class probabilities (rows sum to 1);
- multilabel:     `y_true` 0/1 int (N, C), `probs` float (N, C) independent sigmoid probabilities;
- regression:     `y_true` float (N,), `y_pred` float (N,).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import numpy as np

from tunery.errors import ConfigError

TASKS = ("classification", "multilabel", "regression")

# Scalar metrics each task reports (the names `metric_value` and `train.metric` accept).
_SCALARS = {
    "classification": ["accuracy", "macro_f1", "micro_f1", "weighted_f1", "log_loss", "roc_auc",
                       "pr_auc", "ece"],
    "multilabel": ["micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy"],
    "regression": ["mse", "rmse", "mae", "r2", "pearson", "spearman"],
}
# Defaults chosen to be the figure people quote for each task: accuracy for single-label
# classification (GLUE convention), micro-F1 for multi-label (dominated by frequent labels, stable
# on small validation sets), RMSE for regression (same unit as the target).
_DEFAULTS = {"classification": "accuracy", "multilabel": "micro_f1", "regression": "rmse"}
_LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "hamming_loss", "ece", "error")

THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95

# The full confusion matrix grows with the square of the classes (3,000 classes: 9 million cells,
# hundreds of MB of JSON). Up to this many classes it is kept; beyond, `top_confusions` lists the
# most frequent (true, predicted) mistakes instead.
CONFUSION_MATRIX_MAX_CLASSES = 50
TOP_CONFUSIONS = 50


# ---------------------------------------------------------------------------------------------
# helpers


def _float(x: Any) -> float | None:
    """A plain float, or None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _float(obj)
    return obj


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 from counts; 0 where undefined (sklearn's zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return p, r, f


def _micro_f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else 0.0


def _per_class(label_names: list[str], p, r, f, support) -> dict[str, dict]:
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }


def _binary_auc(y: np.ndarray, s: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision of scores `s` for 0/1 targets `y`; None if one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if y.min() == y.max():
        return None, None
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def _ovr_aucs(y: np.ndarray, P: np.ndarray, classes: np.ndarray, cells: int = 1 << 20) -> np.ndarray:
    """One-vs-rest ROC AUC of each class in `classes` that has positives and negatives.

    AUC = Mann-Whitney U / (n_pos * n_neg), from the ranks (ties averaged) of the class's scores:
    the same value as sklearn's roc_auc_score, computed for a block of columns at once (about
    `cells` cells per block) instead of one call per class, which is what 3,000 classes need.
    """
    from scipy.stats import rankdata

    n = len(y)
    out = []
    block = max(1, cells // max(n, 1))
    for start in range(0, len(classes), block):
        cols = classes[start:start + block]
        pos = y[:, None] == cols[None, :]
        n_pos = pos.sum(axis=0)
        ranks = rankdata(P[:, cols], axis=0)
        rank_sum = np.where(pos, ranks, 0.0).sum(axis=0)
        ok = (n_pos > 0) & (n_pos < n)
        out.append((rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * (n - n_pos[ok])))
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------
# calibration


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = 10) -> dict:
    """Equal-width bins on [0, 1] of top-class confidence. ECE = sum_b n_b/N |acc_b - conf_b|.

    Returns `ece` and the reliability diagram: per bin the mean confidence, the accuracy (None for
    empty bins), the count, and the bin edges.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence 0 goes to the first bin.
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    n = max(len(confidence), 1)
    ece = 0.0
    bin_conf, bin_acc = [], []
    for b in range(bins):
        if count[b] == 0:
            bin_conf.append(None)
            bin_acc.append(None)
            continue
        c, a = conf_sum[b] / count[b], acc_sum[b] / count[b]
        ece += count[b] / n * abs(a - c)
        bin_conf.append(float(c))
        bin_acc.append(float(a))
    return {
        "ece": float(ece),
        "reliability": {"bin_confidence": bin_conf, "bin_accuracy": bin_acc,
                        "bin_count": [int(c) for c in count], "bin_edges": edges.tolist()},
    }


# ---------------------------------------------------------------------------------------------
# per task


def classification_metrics(
    y_true, probs, label_names: list[str], *, calibration_bins: int = 10
) -> dict:
    """Single-label metrics. `probs` (N, C) class probabilities; positive class = index 1 if C=2.

    `roc_auc`: binary AUC of probs[:, 1]; multi-class: macro one-vs-rest AUC over the classes that
    occur in `y_true` (equal to sklearn's `multi_class="ovr"` when all classes occur); None when
    fewer than two classes occur. `pr_auc` (average precision) is reported for binary tasks only.
    `confusion_matrix` (rows true, columns predicted) is given up to CONFUSION_MATRIX_MAX_CLASSES
    classes; beyond, `top_confusions` (see `top_confusions`) keeps the result O(classes) in size.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    P = np.asarray(probs, dtype=float)
    n_classes = len(label_names)
    if P.ndim != 2 or P.shape != (len(y), n_classes):
        raise ValueError(f"probs has shape {P.shape}; expected ({len(y)}, {n_classes})")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true holds class ids outside 0..{n_classes - 1}")
    pred = P.argmax(axis=1)
    # counts per class without the C x C matrix: memory O(N + C) whatever the number of classes
    support = np.bincount(y, minlength=n_classes)
    predicted = np.bincount(pred, minlength=n_classes)
    tp = np.bincount(y[y == pred], minlength=n_classes).astype(float)
    fp = predicted - tp
    fn = support - tp
    p, r, f = _prf(tp, fp, fn)
    n = len(y)
    present = support > 0
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else None,
        # macro over classes present in y_true or predicted (sklearn averages over the union too)
        "macro_f1": float(f[present | (predicted > 0)].mean()) if n else None,
        "micro_f1": _micro_f1(tp.sum(), fp.sum(), fn.sum()),
        "weighted_f1": float((f * support).sum() / n) if n else None,
    }
    eps = 1e-15
    out["log_loss"] = float(-np.mean(np.log(np.clip(P[np.arange(n), y], eps, 1.0)))) if n else None
    if n_classes == 2:
        out["roc_auc"], out["pr_auc"] = _binary_auc((y == 1).astype(int), P[:, 1])
    else:
        aucs = _ovr_aucs(y, P, np.flatnonzero(present))
        out["roc_auc"] = float(np.mean(aucs)) if len(aucs) else None
    out.update(reliability(P.max(axis=1), pred == y, bins=calibration_bins))
    out["per_class"] = _per_class(label_names, p, r, f, support)
    if n_classes <= CONFUSION_MATRIX_MAX_CLASSES:
        cm = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(cm, (y, pred), 1)  # rows = true, columns = predicted
        out["confusion_matrix"] = cm.tolist()
    else:
        out["top_confusions"] = top_confusions(y, pred, label_names)
    return _jsonable(out)


def top_confusions(y_true, y_pred, label_names: list[str], *, k: int = TOP_CONFUSIONS) -> list[dict]:
    """The `k` most frequent mistakes as {"true", "predicted", "count"}, most frequent first (ties
    by true then predicted class index). Memory O(N), however many classes there are."""
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    pred = np.asarray(y_pred).astype(np.int64).reshape(-1)
    wrong = y != pred
    pairs, counts = np.unique(y[wrong] * len(label_names) + pred[wrong], return_counts=True)
    order = np.lexsort((pairs, -counts))[:k]  # by count descending, then by pair
    return [{"true": label_names[int(pairs[i]) // len(label_names)],
             "predicted": label_names[int(pairs[i]) % len(label_names)], "count": int(counts[i])}
            for i in order]


def _binarize(probs: np.ndarray, threshold) -> np.ndarray:
    t = np.asarray(threshold, dtype=float)
    if t.ndim == 1 and t.shape[0] != probs.shape[1]:
        raise ValueError(f"threshold has {t.shape[0]} values for {probs.shape[1]} labels")
    return (probs >= t).astype(int)


def multilabel_metrics(y_true, probs, label_names: list[str], *, threshold=0.5) -> dict:
    """Multi-label metrics at `threshold` (a float, or one value per label); label on iff p >= t.

    `samples_f1` averages per-example F1, counting an example with no true and no predicted label
    as 1.0 (a perfect empty prediction).
    """
    Y = np.asarray(y_true).astype(int)
    P = np.asarray(probs, dtype=float)
    if Y.shape != P.shape or Y.ndim != 2 or Y.shape[1] != len(label_names):
        raise ValueError(f"y_true {Y.shape} and probs {P.shape} must both be (N, {len(label_names)})")
    pred = _binarize(P, threshold)
    tp = (pred & Y).sum(axis=0).astype(float)
    fp = (pred & (1 - Y)).sum(axis=0).astype(float)
    fn = ((1 - pred) & Y).sum(axis=0).astype(float)
    p, r, f = _prf(tp, fp, fn)
    tp_i = (pred & Y).sum(axis=1)
    denom_i = pred.sum(axis=1) + Y.sum(axis=1)
    f_i = np.where(denom_i > 0, 2 * tp_i / np.maximum(denom_i, 1), 1.0)
    n = len(Y)
    t = np.asarray(threshold, dtype=float)
    out = {
        "n": n,
        "micro_f1": _micro_f1(tp.sum(), fp.sum(), fn.sum()),
        "macro_f1": float(f.mean()),
        "samples_f1": float(f_i.mean()) if n else None,
        "hamming_loss": float((pred != Y).mean()) if n else None,
        "subset_accuracy": float((pred == Y).all(axis=1).mean()) if n else None,
        "per_class": _per_class(label_names, p, r, f, Y.sum(axis=0)),
        "threshold": float(t) if t.ndim == 0 else t.tolist(),
    }
    return _jsonable(out)


def regression_metrics(y_true, y_pred) -> dict:
    """MSE, RMSE, MAE, R², Pearson and Spearman correlation (None when a side is constant)."""
    from scipy.stats import pearsonr, spearmanr

    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(y_pred, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and y_pred {p.shape} differ in shape")
    err = p - y
    mse = float(np.mean(err**2)) if len(y) else None
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    varying = len(y) > 1 and np.ptp(y) > 0 and np.ptp(p) > 0
    out = {
        "n": len(y),
        "mse": mse,
        "rmse": math.sqrt(mse) if mse is not None else None,
        "mae": float(np.mean(np.abs(err))) if len(y) else None,
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else None,
        "pearson": float(pearsonr(y, p)[0]) if varying else None,
        "spearman": float(spearmanr(y, p)[0]) if varying else None,
    }
    return _jsonable(out)


def tune_threshold(y_true, probs) -> float:
    """The global threshold in 0.05, 0.10, .., 0.95 that maximises micro-F1 (ties: closest to 0.5)."""
    Y = np.asarray(y_true).astype(bool)
    P = np.asarray(probs, dtype=float)
    best_t, best_f = 0.5, -1.0
    for t in sorted(THRESHOLD_GRID, key=lambda t: (abs(t - 0.5), t)):
        pred = P >= t
        tp = float((pred & Y).sum())
        f = _micro_f1(tp, float((pred & ~Y).sum()), float((~pred & Y).sum()))
        if f > best_f + 1e-12:
            best_t, best_f = t, f
    return float(best_t)


MIN_POSITIVES_PER_LABEL = 10  # validation positives a label needs before it gets its own threshold


def tune_thresholds(y_true, probs, *, min_positives: int = MIN_POSITIVES_PER_LABEL) -> tuple[float, list[float]]:
    """The global threshold (`tune_threshold`) and one per label: the grid value that maximises the
    label's own F1 where validation has at least `min_positives` positives of it (ties: closest to
    the global one); labels with fewer keep the global threshold, which is less noisy."""
    Y = np.asarray(y_true).astype(bool)
    P = np.asarray(probs, dtype=float)
    glob = tune_threshold(Y, P)
    per = np.full(Y.shape[1] if Y.ndim == 2 else 0, glob)
    pos = Y.sum(axis=0) if Y.ndim == 2 else np.zeros(0)
    best_f = np.full(per.shape, -1.0)
    for t in sorted(THRESHOLD_GRID, key=lambda t: (abs(t - glob), t)):
        pred = P >= t
        tp = (pred & Y).sum(axis=0).astype(float)
        f = _prf(tp, (pred & ~Y).sum(axis=0).astype(float), (~pred & Y).sum(axis=0).astype(float))[2]
        better = (f > best_f + 1e-12) & (pos >= min_positives)
        per[better], best_f[better] = t, f[better]
    return float(glob), [float(v) for v in per]


def validation_loss(task: str, y_true, scores) -> float:
    """A threshold-free loss of `scores` (cross-entropy, binary cross-entropy, or MSE for
    regression): lower is better; breaks ties between checkpoints whose selection metric is equal."""
    _check_task(task)
    if task == "regression":
        return float(np.mean((np.asarray(scores, dtype=float) - np.asarray(y_true, dtype=float)) ** 2))
    P = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    if task == "classification":
        y = np.asarray(y_true).astype(np.int64).reshape(-1)
        return float(-np.log(P[np.arange(len(y)), y]).mean())
    Y = np.asarray(y_true).astype(float)
    return float(-(Y * np.log(P) + (1 - Y) * np.log(1 - P)).mean())


def compute_metrics(
    task: str, y_true, scores, label_names: list[str], *, threshold=0.5, calibration_bins: int = 10
) -> dict:
    """Dispatch to the metrics of `task` ("classification", "multilabel" or "regression")."""
    _check_task(task)
    if task == "classification":
        return classification_metrics(y_true, scores, label_names, calibration_bins=calibration_bins)
    if task == "multilabel":
        return multilabel_metrics(y_true, scores, label_names, threshold=threshold)
    return regression_metrics(y_true, scores)


# ---------------------------------------------------------------------------------------------
# selecting on a metric


def default_metric(task: str) -> str:
    """"accuracy" (classification), "micro_f1" (multilabel), "rmse" (regression)."""
    _check_task(task)
    return _DEFAULTS[task]


def metric_names(task: str) -> list[str]:
    """The scalar metric names `task` reports: valid values of `train.metric`."""
    _check_task(task)
    return list(_SCALARS[task])


def greater_is_better(metric_name: str) -> bool:
    """False for losses and errors (loss, log_loss, mse, rmse, mae, hamming_loss, ece), else True."""
    name = metric_name.rsplit(".", 1)[-1].lower()
    if name.startswith("eval_"):
        name = name[len("eval_"):]
    return not name.endswith(_LOWER_IS_BETTER)


def _scalar_names(metrics: dict, prefix: str = "") -> list[str]:
    names = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            names += _scalar_names(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            names.append(prefix + k)
    return names


def metric_value(metrics: dict, name: str) -> float:
    """The value of metric `name` in a metrics dict, as a float (NaN when undefined, e.g. roc_auc
    with one class present). Dotted names reach nested values: "per_class.positive.f1".

    Raises ConfigError naming the valid metric names when `name` is not there.
    """
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            node = "missing"
            break
        node = node[part]
    if node is not None and (isinstance(node, bool) or not isinstance(node, (int, float))):
        valid = [k for k in _scalar_names(metrics) if "." not in k and k != "n"]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"metric {name!r} is not one of the computed metrics{hint}; valid names: "
            f"{', '.join(valid)} (or per_class.<label>.f1 and the like)"
        )
    return float("nan") if node is None else float(node)

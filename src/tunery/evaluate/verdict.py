"""The verdict: does the model beat its baseline, and if not, the likely causes that can be seen.

How "beats" is decided. The model and the baseline are scored on the same rows, so their
difference is judged with a *paired bootstrap*: the rows are resampled with replacement
(`N_RESAMPLES` times, a fixed seed), the metric of both is computed on each resample, and the
standard error of the difference is the standard deviation of those resampled differences. The
noise margin is 1.96 standard errors (the half-width of a 95 % normal interval):

- the model beats the baseline when it is better by more than the margin;
- it loses when it is worse by more than the margin;
- anything in between is a tie, which is not a loss (a small test set cannot tell them apart).

`beats_baseline` is False only for a loss. The figures compared (`model`, `baseline`) are the
metrics computed on the whole split, the same as in metrics.json.

The likely causes come from what the run recorded: the data report's findings (vocabulary
coverage, too few examples, imbalance), the rows per class, and the learning curve in log.jsonl
(still improving at the end, a training loss that did not fall, a flat validation metric). Plain
functions; nothing here trains or reads a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tunery.evaluate.metrics import compute_metrics, greater_is_better, metric_value

__all__ = ["N_RESAMPLES", "compare_to_baseline", "likely_causes", "make_verdict", "read_history",
           "verdict_line"]

N_RESAMPLES = 500
Z_95 = 1.96
FEW_ROWS_PER_CLASS = 100  # below this many training rows per class, fine-tuning rarely beats TF-IDF
VOCABULARY_UNK_SHARE = 0.05  # a "vocabulary" finding at or above this [UNK] share is named as a cause
BASELINE_NAME = "TF-IDF baseline"


# ---------------------------------------------------------------------------------------------
# the paired comparison


def _fast_metric(task: str, metric: str, n_classes: int, threshold) -> tuple[Callable, Callable] | None:
    """(prepare(scores) -> z, value(y, z) -> float) for metrics cheap to recompute per resample;
    None for the others (AUCs, ECE, correlations, per-class figures)."""
    if task == "classification":
        def f1s(y, pred):
            support = np.bincount(y, minlength=n_classes)
            predicted = np.bincount(pred, minlength=n_classes)
            tp = np.bincount(y[y == pred], minlength=n_classes).astype(float)
            denom = support + predicted
            f = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
            return f, support, predicted

        argmax = (lambda s: np.asarray(s, dtype=float).argmax(axis=1))
        table = {
            "accuracy": (argmax, lambda y, p: float(np.mean(y == p))),
            "micro_f1": (argmax, lambda y, p: float(np.mean(y == p))),  # single-label: = accuracy
            "macro_f1": (argmax, lambda y, p: (lambda f, s, q: float(f[(s > 0) | (q > 0)].mean()))(*f1s(y, p))),
            "weighted_f1": (argmax, lambda y, p: (lambda f, s, q: float((f * s).sum() / len(y)))(*f1s(y, p))),
        }
        if metric == "log_loss":
            # the per-row loss needs the true class: keep the probabilities, index them per resample
            return (lambda s: np.asarray(s, dtype=float),
                    lambda y, P: float(-np.mean(np.log(np.clip(P[np.arange(len(y)), y], 1e-15, 1.0)))))
        return table.get(metric)
    if task == "multilabel":
        t = np.asarray(threshold, dtype=float)
        binarize = (lambda s: (np.asarray(s, dtype=float) >= t).astype(int))

        def prf(Y, P):
            tp = (P & Y).sum(axis=0).astype(float)
            fp = (P & (1 - Y)).sum(axis=0).astype(float)
            fn = ((1 - P) & Y).sum(axis=0).astype(float)
            return tp, fp, fn

        def micro(Y, P):
            tp, fp, fn = (v.sum() for v in prf(Y, P))
            return float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) > 0 else 0.0

        def macro(Y, P):
            tp, fp, fn = prf(Y, P)
            d = 2 * tp + fp + fn
            return float(np.divide(2 * tp, d, out=np.zeros_like(tp), where=d > 0).mean())

        def samples(Y, P):
            d = P.sum(axis=1) + Y.sum(axis=1)
            return float(np.where(d > 0, 2 * (P & Y).sum(axis=1) / np.maximum(d, 1), 1.0).mean())

        table = {"micro_f1": micro, "macro_f1": macro, "samples_f1": samples,
                 "hamming_loss": lambda Y, P: float((P != Y).mean()),
                 "subset_accuracy": lambda Y, P: float((P == Y).all(axis=1).mean())}
        return (binarize, table[metric]) if metric in table else None
    if task == "regression":
        flat = (lambda s: np.asarray(s, dtype=float).reshape(-1))

        def r2(y, p):
            ss = float(np.sum((y - y.mean()) ** 2))
            return 1.0 - float(np.sum((p - y) ** 2)) / ss if ss > 0 else float("nan")

        table = {"mse": lambda y, p: float(np.mean((p - y) ** 2)),
                 "rmse": lambda y, p: math.sqrt(float(np.mean((p - y) ** 2))),
                 "mae": lambda y, p: float(np.mean(np.abs(p - y))), "r2": r2}
        return (flat, table[metric]) if metric in table else None
    return None


def compare_to_baseline(task: str, metric: str, y_true, model_scores, baseline_scores, *,
                        label_names: list[str], model_threshold=0.5, baseline_threshold=0.5,
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Model against baseline on the same rows: each one's `metric`, the noise `margin` (1.96
    paired-bootstrap standard errors of the difference) and the `outcome` ("better", "tie",
    "worse"). See the module docstring for the rule."""
    y = np.asarray(y_true)
    n = int(len(y))
    kw = {"calibration_bins": 10}
    model_value = metric_value(compute_metrics(task, y, model_scores, label_names, threshold=model_threshold,
                                               **kw), metric)
    base_value = metric_value(compute_metrics(task, y, baseline_scores, label_names,
                                              threshold=baseline_threshold, **kw), metric)
    fast_model = _fast_metric(task, metric, len(label_names), model_threshold)
    fast_base = _fast_metric(task, metric, len(label_names), baseline_threshold)
    if fast_model and fast_base:
        zm, zb = fast_model[0](model_scores), fast_base[0](baseline_scores)
        fm, fb = fast_model[1], fast_base[1]
        resamples = n_resamples
    else:  # the whole metrics on each resample: slower, so fewer resamples
        zm, zb = np.asarray(model_scores, dtype=float), np.asarray(baseline_scores, dtype=float)

        def fm(yy, z, t=model_threshold):
            return metric_value(compute_metrics(task, yy, z, label_names, threshold=t, **kw), metric)

        def fb(yy, z, t=baseline_threshold):
            return metric_value(compute_metrics(task, yy, z, label_names, threshold=t, **kw), metric)

        resamples = min(n_resamples, 100)
    rng = np.random.default_rng(seed)
    diffs = np.full(resamples if n > 1 else 0, np.nan)
    for i in range(len(diffs)):
        idx = rng.integers(0, n, n)
        diffs[i] = fm(y[idx], zm[idx]) - fb(y[idx], zb[idx])
    finite = diffs[np.isfinite(diffs)]
    se = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    margin = Z_95 * se
    sign = 1.0 if greater_is_better(metric) else -1.0
    gain = sign * (model_value - base_value)
    if not (math.isfinite(model_value) and math.isfinite(base_value)):
        outcome = "tie"  # an undefined figure (e.g. AUC with one class) decides nothing
    elif gain > margin:
        outcome = "better"
    elif gain < -margin:
        outcome = "worse"
    else:
        outcome = "tie"
    return {"metric": metric, "model": model_value, "baseline": base_value, "margin": margin, "n": n,
            "outcome": outcome,
            "method": f"paired bootstrap over {n} rows ({len(finite)} resamples), margin = {Z_95} standard errors"}


# ---------------------------------------------------------------------------------------------
# the likely causes


def read_history(run_dir: str | Path) -> list[dict]:
    """The records of a run's log.jsonl (training steps and validation evaluations); [] if none."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _data_causes(data_report: dict | None) -> list[dict]:
    causes = []
    if not data_report:
        return causes
    for f in data_report.get("findings") or []:
        code = f.get("code")
        if code == "vocabulary":
            details = f.get("details") or {}
            unk = details.get("unk_token_share")
            if unk is not None and unk < VOCABULARY_UNK_SHARE and f.get("severity") != "error":
                continue
            share = f"{100 * unk:.1f} % of the tokens are unknown to the backbone ([UNK])" if unk is not None \
                else "the backbone's vocabulary does not cover the text"
            langs = details.get("backbone_languages")
            causes.append({"code": "vocabulary",
                           "message": f"vocabulary coverage: {share}"
                                      + (f"; the backbone covers {langs}" if langs else "")
                                      + ". Use a backbone that covers the data's language, or keep the baseline"})
        elif code in ("too_few_examples", "imbalance"):
            causes.append({"code": code, "message": f.get("message", code)})
    counts = ((data_report.get("summary") or {}).get("label_counts") or {}).get("train")
    if isinstance(counts, dict) and counts:
        present = {k: v for k, v in counts.items() if isinstance(v, (int, float)) and v > 0}
        if present:
            smallest = min(present, key=present.get)
            if present[smallest] < FEW_ROWS_PER_CLASS:
                causes.append({"code": "few_rows_per_class",
                               "message": f"too few rows per class: class {smallest!r} has "
                                          f"{int(present[smallest])} training rows (fewer than "
                                          f"{FEW_ROWS_PER_CLASS}); a fine-tuned model usually needs a few "
                                          "hundred per class to beat TF-IDF. Add labelled examples"})
    return causes


def _curve_causes(history: list[dict] | None, metric: str) -> list[dict]:
    causes = []
    if not history:
        return causes
    losses = [r["loss"] for r in history if "loss" in r and "split" not in r]
    evals = [r[metric] for r in history if r.get("split") == "validation" and isinstance(r.get(metric), (int, float))]
    if losses and (any(not math.isfinite(v) for v in losses)
                   or (len(losses) >= 2 and losses[-1] >= losses[0])):
        causes.append({"code": "loss_not_falling",
                       "message": f"the training loss did not fall ({losses[0]:.4g} at the start, "
                                  f"{losses[-1]:.4g} at the end): the learning rate may be too high "
                                  "(lower train.lr) or the model is not learning"})
    if len(evals) >= 2:
        finite = [v for v in evals if math.isfinite(v)]
        if finite and max(finite) - min(finite) < 1e-9:
            causes.append({"code": "flat_curve",
                           "message": f"validation {metric} never changed ({finite[0]:.4g} at every "
                                      "evaluation): the model may predict one class; lower train.lr or check "
                                      "the labels"})
        else:
            up = greater_is_better(metric)
            last, prev = evals[-1], evals[-2]
            best = max(evals) if up else min(evals)
            if last == best and (last > prev if up else last < prev):
                causes.append({"code": "still_improving",
                               "message": f"validation {metric} was still improving at the last evaluation "
                                          f"({prev:.4g} -> {last:.4g}): train longer (train.epochs) or raise "
                                          "train.lr"})
    return causes


def _collapse_cause(model_metrics: dict | None, label_names: list[str] | None) -> list[dict]:
    cm = (model_metrics or {}).get("confusion_matrix")
    if not cm or len(cm) < 2:
        return []
    predicted = np.asarray(cm).sum(axis=0)
    if predicted.sum() and (predicted > 0).sum() == 1:
        name = (label_names or [])[int(predicted.argmax())] if label_names else int(predicted.argmax())
        return [{"code": "one_class",
                 "message": f"the model predicts one class ({name!r}) for every row: it has not learned; "
                            "lower train.lr, train longer, or add examples"}]
    return []


def likely_causes(*, data_report: dict | None = None, history: list[dict] | None = None, metric: str = "",
                  model_metrics: dict | None = None, label_names: list[str] | None = None) -> list[dict]:
    """What the run recorded that explains a model no better than its baseline, as
    [{"code", "message"}], data first, then the learning curve."""
    return (_data_causes(data_report) + _collapse_cause(model_metrics, label_names)
            + _curve_causes(history, metric))


# ---------------------------------------------------------------------------------------------
# the verdict


def make_verdict(split: str, comparison: dict, causes: list[dict] | None = None, *,
                 baseline_name: str = BASELINE_NAME) -> dict[str, Any]:
    """The "verdict" object of metrics.json from `compare_to_baseline`'s result and `likely_causes`. Causes
    are kept only when the model is not better."""
    metric, m, b, margin, n = (comparison[k] for k in ("metric", "model", "baseline", "margin", "n"))
    outcome = comparison["outcome"]
    figures = f"{metric} {m:.3f} vs {b:.3f}"
    noise = f"the ±{margin:.3f} noise margin of {n} {split} rows"
    if outcome == "worse":
        summary = f"The model does NOT beat the {baseline_name} on {split}: {figures}, worse by more than {noise}."
    elif outcome == "tie":
        summary = (f"The model is level with the {baseline_name} on {split}: {figures}, within {noise} "
                   "(not a clear win).")
    else:
        summary = f"The model beats the {baseline_name} on {split}: {figures}, better by more than {noise}."
    return {"beats_baseline": outcome != "worse", "outcome": outcome, "split": split, "metric": metric,
            "model": m, "baseline": b, "margin": margin, "n": n, "method": comparison.get("method"),
            "summary": summary, "causes": list(causes or []) if outcome != "better" else []}


def verdict_line(verdict: dict) -> str:
    """The verdict as one plain paragraph for a terminal: the summary, then the likely causes."""
    text = verdict["summary"]
    causes = verdict.get("causes") or []
    if causes:
        text += " Likely causes: " + "; ".join(c["message"] for c in causes) + "."
    elif not verdict.get("beats_baseline"):
        text += " No cause could be seen in the data report or the learning curve."
    return text

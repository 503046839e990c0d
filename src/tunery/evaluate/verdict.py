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

N_RESAMPLES = 200  # the standard error to about 5 %
Z_95 = 1.96
FEW_ROWS_PER_CLASS = 100  # below this many training rows per class, fine-tuning rarely beats TF-IDF
VOCABULARY_UNK_SHARE = 0.05  # a "vocabulary" finding at or above this [UNK] share is named as a cause
BASELINE_NAME = "TF-IDF baseline"


# ---------------------------------------------------------------------------------------------
# the paired comparison


def _per_label(kind: str, tp, support, predicted):
    """precision, recall or f1 per class/label from (B, C) counts."""
    if kind == "precision":
        num, den = tp, predicted
    elif kind == "recall":
        num, den = tp, support
    else:
        num, den = 2 * tp, support + predicted
    return np.divide(num, den, out=np.zeros_like(tp, dtype=float), where=den > 0)


def _row_stats(task: str, metric: str, y, scores, threshold,
               label_names: list[str]) -> tuple[np.ndarray, Callable] | None:
    """Per-row statistics S (n, k) and f(sums (B, k), rows (B,)) -> metric (B,), for the metrics
    that are functions of sums over rows: a bootstrap resample is then one weighted sum. None for
    the others (AUCs, ECE, correlations)."""
    per_class = None
    if metric.startswith("per_class."):
        _, name, kind = (metric.split(".", 2) + ["", ""])[:3]
        if name not in label_names or kind not in ("precision", "recall", "f1"):
            return None
        per_class = (label_names.index(name), kind)
    C = len(label_names)
    if task == "classification":
        P = np.asarray(scores, dtype=float)
        yy = np.asarray(y).astype(int).reshape(-1)
        pred = P.argmax(axis=1)
        if metric == "log_loss":
            loss = -np.log(np.clip(P[np.arange(len(yy)), yy], 1e-15, 1.0))
            return loss[:, None], lambda s, n: s[:, 0] / n
        eye = np.eye(C)
        S = np.hstack([eye[yy], eye[pred], eye[yy] * (yy == pred)[:, None]])

        def split(s):
            return s[:, :C], s[:, C:2 * C], s[:, 2 * C:]

        if per_class:
            i, kind = per_class
            return S, lambda s, n: _per_label(kind, split(s)[2], split(s)[0], split(s)[1])[:, i]
        if metric in ("accuracy", "micro_f1"):  # single-label: micro-F1 = accuracy
            return S, lambda s, n: split(s)[2].sum(axis=1) / n
        if metric == "macro_f1":
            def macro(s, n):
                support, predicted, tp = split(s)
                f = _per_label("f1", tp, support, predicted)
                present = (support > 0) | (predicted > 0)
                return (f * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
            return S, macro
        if metric == "weighted_f1":
            return S, lambda s, n: (_per_label("f1", split(s)[2], split(s)[0], split(s)[1]) * split(s)[0]).sum(
                axis=1) / n
        return None
    if task == "multilabel":
        Y = np.asarray(y).astype(int)
        Pb = (np.asarray(scores, dtype=float) >= np.asarray(threshold, dtype=float)).astype(int)
        tp, fp, fn = Pb & Y, Pb & (1 - Y), (1 - Pb) & Y
        d = Pb.sum(axis=1) + Y.sum(axis=1)
        f_row = np.where(d > 0, 2 * tp.sum(axis=1) / np.maximum(d, 1), 1.0)
        S = np.hstack([tp, fp, fn, f_row[:, None], (Pb != Y).mean(axis=1)[:, None],
                       (Pb == Y).all(axis=1)[:, None]]).astype(float)

        def parts(s):
            return s[:, :C], s[:, C:2 * C], s[:, 2 * C:3 * C]

        if per_class:
            i, kind = per_class
            return S, lambda s, n: _per_label(kind, parts(s)[0], parts(s)[0] + parts(s)[2],
                                              parts(s)[0] + parts(s)[1])[:, i]
        if metric == "micro_f1":
            def micro(s, n):
                t, f_p, f_n = (v.sum(axis=1) for v in parts(s))
                den = 2 * t + f_p + f_n
                return np.divide(2 * t, den, out=np.zeros_like(t), where=den > 0)
            return S, micro
        if metric == "macro_f1":
            return S, lambda s, n: _per_label("f1", parts(s)[0], parts(s)[0] + parts(s)[2],
                                              parts(s)[0] + parts(s)[1]).mean(axis=1)
        column = {"samples_f1": 3 * C, "hamming_loss": 3 * C + 1, "subset_accuracy": 3 * C + 2}.get(metric)
        return (S, lambda s, n: s[:, column] / n) if column is not None else None
    if task == "regression":
        yy = np.asarray(y, dtype=float).reshape(-1)
        e = np.asarray(scores, dtype=float).reshape(-1) - yy
        S = np.stack([e ** 2, np.abs(e), yy, yy ** 2], axis=1)
        if metric == "mse":
            return S, lambda s, n: s[:, 0] / n
        if metric == "rmse":
            return S, lambda s, n: np.sqrt(s[:, 0] / n)
        if metric == "mae":
            return S, lambda s, n: s[:, 1] / n
        if metric == "r2":
            def r2(s, n):
                ss_tot = s[:, 3] - s[:, 2] ** 2 / n
                return np.where(ss_tot > 0, 1.0 - s[:, 0] / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
            return S, r2
    return None


def _bootstrap_diffs(y, model_scores, baseline_scores, task: str, metric: str, label_names: list[str],
                     model_threshold, baseline_threshold, n_resamples: int, seed: int) -> np.ndarray:
    """The metric's model-minus-baseline difference on `n_resamples` paired bootstrap resamples of
    the rows (each resample as row counts, so a metric made of per-row sums is one matrix product);
    a metric without per-row sums is recomputed in full on each resample, fewer of them."""
    n = len(y)
    rng = np.random.default_rng(seed)
    fast_m = _row_stats(task, metric, y, model_scores, model_threshold, label_names)
    fast_b = _row_stats(task, metric, y, baseline_scores, baseline_threshold, label_names)
    if fast_m and fast_b:
        (Sm, fm), (Sb, fb) = fast_m, fast_b
        out = []
        chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
        for start in range(0, n_resamples, chunk):
            W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                          for _ in range(min(chunk, n_resamples - start))]).astype(float)
            rows = np.full(len(W), float(n))
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(fm(W @ Sm, rows) - fb(W @ Sb, rows))
        return np.concatenate(out) if out else np.zeros(0)
    kw = {"calibration_bins": 10}
    resamples = max(20, min(n_resamples, 100, 2_000_000 // max(n, 1)))
    zm, zb = np.asarray(model_scores, dtype=float), np.asarray(baseline_scores, dtype=float)
    diffs = np.full(resamples, np.nan)
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        diffs[i] = (metric_value(compute_metrics(task, y[idx], zm[idx], label_names, threshold=model_threshold,
                                                 **kw), metric)
                    - metric_value(compute_metrics(task, y[idx], zb[idx], label_names,
                                                   threshold=baseline_threshold, **kw), metric))
    return diffs


def compare_to_baseline(task: str, metric: str, y_true, model_scores, baseline_scores, *,
                        label_names: list[str], model_threshold=0.5, baseline_threshold=0.5,
                        n_resamples: int = N_RESAMPLES, seed: int = 0,
                        values: tuple[float, float] | None = None) -> dict[str, Any]:
    """Model against baseline on the same rows: each one's `metric`, the noise `margin` (1.96
    paired-bootstrap standard errors of the difference) and the `outcome` ("better", "tie",
    "worse"). See the module docstring for the rule. `values`: the (model, baseline) figures on
    all the rows when already computed."""
    y = np.asarray(y_true)
    n = int(len(y))
    if values is None:
        values = tuple(metric_value(compute_metrics(task, y, s, label_names, threshold=t), metric)
                       for s, t in ((model_scores, model_threshold), (baseline_scores, baseline_threshold)))
    model_value, base_value = (float(v) for v in values)
    diffs = _bootstrap_diffs(y, model_scores, baseline_scores, task, metric, label_names, model_threshold,
                             baseline_threshold, n_resamples, seed) if n > 1 else np.zeros(0)
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
            scripts = details.get("scripts") or {}
            top = sorted(((k, v) for k, v in scripts.items() if isinstance(v, (int, float))), key=lambda kv: -kv[1])
            what = [f"{100 * unk:.1f} % of the tokens are unknown to the backbone ([UNK])"] if unk is not None \
                and unk >= VOCABULARY_UNK_SHARE else []
            if top:
                what.append("letters by script: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in top[:3]))
            langs = details.get("backbone_languages")
            causes.append({"code": "vocabulary",
                           "message": "vocabulary coverage: " + ("; ".join(what) or "the backbone's vocabulary "
                                                                 "does not cover the text")
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

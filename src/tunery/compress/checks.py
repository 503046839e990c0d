"""The checks a compressed model passes before it becomes a run: plain functions of scores.

- parity: the fp32 ONNX graph against torch, on the same padded batches (max logit difference,
  identical predictions);
- drop: the compressed model's value of the run's metric against the original's;
- collapse: int8 can turn a BERT into a constant classifier (every text one class) while the
  accuracy on an imbalanced split drops only by the minority share; a class the original predicts
  for 1 % of the rows or more that the compressed model never predicts is a collapse, whatever the
  metric says.
"""

from __future__ import annotations

import numpy as np

COLLAPSE_SHARE = 0.01  # a class the original predicts this often must survive compression
COLLAPSE_SPREAD = 0.1  # regression: predictions with < 10 % of the original's spread have collapsed


def parity(reference: np.ndarray, candidate: np.ndarray, *, task: str) -> dict:
    """Max absolute logit difference and the share of rows with the same prediction."""
    diff = float(np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)).max()) \
        if len(reference) else 0.0
    a, b = predictions(reference, task), predictions(candidate, task)
    same = np.isclose(a, b, rtol=1e-4, atol=1e-4) if task == "regression" else a == b  # a value: equal to 1e-4
    same = same.all(axis=1) if same.ndim == 2 else same
    return {"max_logit_diff": diff, "same_predictions": float(same.mean()) if len(same) else 1.0,
            "rows": int(len(reference))}


def predictions(logits: np.ndarray, task: str) -> np.ndarray:
    """What a model decides from its logits: the class (N,), the labels on (N, C), or the value (N,)."""
    logits = np.asarray(logits)
    if task == "classification":
        return logits.argmax(axis=1)
    if task == "multilabel":
        return logits > 0  # sigmoid(x) > 0.5
    return logits.reshape(len(logits), -1)[:, 0]


def drop_points(original: float, compressed: float, *, greater_is_better: bool, task: str) -> float:
    """How much worse the compressed model is, in points: 100 x the difference of a score in [0, 1]
    (accuracy, F1); for regression errors (rmse, mae) the relative increase in percent. Negative
    when it is better."""
    if task == "regression" and not greater_is_better:
        return 100.0 * (compressed - original) / max(abs(original), 1e-12)
    worse = (original - compressed) if greater_is_better else (compressed - original)
    return 100.0 * worse


def collapse(original: np.ndarray, compressed: np.ndarray, *, task: str, label_names: list[str]) -> str | None:
    """Why the compressed model's decisions have collapsed, or None. Arguments: each model's
    decisions (`predictions`) on the same rows."""
    n = len(original)
    if not n:
        return None
    if task == "regression":
        before, after = float(np.std(original)), float(np.std(compressed))
        if before > 0 and after < COLLAPSE_SPREAD * before:
            return (f"its predictions barely vary (standard deviation {after:.4g} against the original's "
                    f"{before:.4g}): it has collapsed to a near-constant value")
        return None
    lost = []
    for k, name in enumerate(label_names):
        was = (original == k).mean() if task == "classification" else original[:, k].mean()
        now = (compressed == k).mean() if task == "classification" else compressed[:, k].mean()
        if was >= COLLAPSE_SHARE and now == 0:
            lost.append(f"{name!r} ({100 * was:.1f} % of rows before)")
    if not lost:
        return None
    return (f"it never predicts {', '.join(lost)}, which the original predicts: it has collapsed (int8 can turn "
            "a model into a near-constant classifier)")


def latency(score, texts: list, *, batch: int = 32, one_text_runs: int = 50) -> dict:
    """Timings of `score(texts)` (a Predictor's; `texts` may be any rows `score` takes): one text at a time (p50, p99 in ms over
    `one_text_runs` texts, after one warm-up) and batch throughput (texts/s over all `texts` in
    batches of `batch`)."""
    import time

    score(texts[:1])
    one = []
    for text in (texts * (one_text_runs // max(len(texts), 1) + 1))[:one_text_runs]:
        start = time.perf_counter()
        score([text])
        one.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        score(texts[i : i + batch])
    seconds = time.perf_counter() - start
    return {"one_text_ms_p50": float(np.percentile(one, 50)), "one_text_ms_p99": float(np.percentile(one, 99)),
            "batch": batch, "texts_per_s": len(texts) / seconds if seconds > 0 else None, "texts": len(texts)}

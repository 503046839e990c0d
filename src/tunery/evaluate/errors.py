"""Error analysis: the examples the model gets wrong most confidently.

Each mistake is a plain dict (JSON-serialisable):

- classification: index, text, true, predicted (label names), confidence (probability of the
  predicted class), true_prob (probability given to the true class);
- multilabel: index, text, true, predicted (lists of label names), confidence (for the most
  confidently wrong label: p for a false positive, 1 - p for a false negative), wrong (that label);
- regression: index, text, true, predicted, error (absolute error); sorted by error.

`index` is the position in the arrays given. With `rows` (and `sources`), each mistake also
carries `row` (the 1-based data record in the user's file, as the prepared frames hold it) and
`source` (that file), so a reader finds the example where it came from (`row` may also be a
DataFrame's index label, kept as a string when it is not an integer).
"""

from __future__ import annotations

import numpy as np


def most_confident_mistakes(
    task: str, texts: list[str], y_true, scores, label_names: list[str], *, n: int = 20,
    threshold=0.5, rows=None, sources=None,
) -> list[dict]:
    """The `n` most confident mistakes, most confident first (regression: largest errors).

    `rows` / `sources` (one per text, optional): where each text came from; copied into the
    mistakes as `row` / `source`."""
    if n <= 0 or len(texts) == 0:
        return []
    for name, seq in (("rows", rows), ("sources", sources)):
        if seq is not None and len(seq) != len(texts):
            raise ValueError(f"most_confident_mistakes: {name} has {len(seq)} entries for {len(texts)} texts; "
                             f"pass one per text (or None)")
    out = _mistakes(task, texts, y_true, scores, label_names, n=n, threshold=threshold)
    for m in out:
        i = m["index"]
        if rows is not None:
            r = rows[i]
            m["row"] = int(r) if isinstance(r, (int, np.integer)) else str(r)  # a row, or an index label
        if sources is not None:
            m["source"] = None if sources[i] is None else str(sources[i])
    return out


def _mistakes(task: str, texts: list[str], y_true, scores, label_names: list[str], *, n: int,
              threshold) -> list[dict]:
    if task == "classification":
        y = np.asarray(y_true).astype(int).reshape(-1)
        P = np.asarray(scores, dtype=float)
        pred = P.argmax(axis=1)
        conf = P[np.arange(len(y)), pred]
        wrong = np.flatnonzero(pred != y)
        order = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
        return [
            {"index": int(i), "text": str(texts[i]), "true": label_names[y[i]],
             "predicted": label_names[pred[i]], "confidence": float(conf[i]),
             "true_prob": float(P[i, y[i]])}
            for i in order
        ]
    if task == "multilabel":
        Y = np.asarray(y_true).astype(int)
        P = np.asarray(scores, dtype=float)
        pred = (P >= np.asarray(threshold, dtype=float)).astype(int)
        # how sure the model was of each wrong decision; 0 where the decision is right
        wrongness = np.where(pred != Y, np.where(pred == 1, P, 1.0 - P), 0.0)
        worst = wrongness.argmax(axis=1)
        conf = wrongness[np.arange(len(Y)), worst]
        wrong = np.flatnonzero((pred != Y).any(axis=1))
        order = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
        return [
            {"index": int(i), "text": str(texts[i]),
             "true": [label_names[j] for j in np.flatnonzero(Y[i])],
             "predicted": [label_names[j] for j in np.flatnonzero(pred[i])],
             "confidence": float(conf[i]), "wrong": label_names[worst[i]]}
            for i in order
        ]
    if task == "regression":
        y = np.asarray(y_true, dtype=float).reshape(-1)
        p = np.asarray(scores, dtype=float).reshape(-1)
        err = np.abs(p - y)
        order = np.argsort(-err, kind="stable")[:n]
        return [
            {"index": int(i), "text": str(texts[i]), "true": float(y[i]),
             "predicted": float(p[i]), "error": float(err[i])}
            for i in order
        ]
    raise ValueError(f"task {task!r} is not one of classification, multilabel, regression")

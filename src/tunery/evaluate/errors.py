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


def examples_to_explain(
    task: str, texts: list[str], y_true, scores, label_names: list[str], *, n: int = 8, threshold=0.5,
    rows=None, sources=None,
) -> list[dict]:
    """Up to `n` examples for the report's explanations: the most confident mistakes first (as
    `most_confident_mistakes`, up to n - 3n//8 of them: 5 of 8), then correct predictions for the
    rest (3 of 8, more where there are fewer mistakes). Each is a mistake's dict (correct ones have
    the same keys) with `kind` ("mistake" or "correct") and `target`, what to explain: a label name,
    or None for a regression's value.

    - classification: a mistake's target is the label it predicted (why the model said it); the
      correct ones are the most confident, taken in turn from each predicted class;
    - multilabel: a mistake's target is the label it was most confidently wrong about (`wrong`: a
      false positive, or a missed label whose low probability is explained); the correct ones
      (every label right) are the most confident, in turn per top predicted label, which is their
      target;
    - regression: the largest errors, then the closest predictions, spread over the target's range.
    """
    if n <= 0 or len(texts) == 0:
        return []
    mistakes = most_confident_mistakes(task, texts, y_true, scores, label_names, n=n - 3 * n // 8,
                                       threshold=threshold, rows=rows, sources=sources)
    for m in mistakes:
        m["kind"] = "mistake"
        m["target"] = {"classification": m.get("predicted"), "multilabel": m.get("wrong")}.get(task)
    k = n - len(mistakes)
    correct = _correct(task, y_true, scores, label_names, k, threshold) if k > 0 else []
    for c in correct:
        i = c["index"]
        c["text"] = str(texts[i])
        if rows is not None:
            r = rows[i]
            c["row"] = int(r) if isinstance(r, (int, np.integer)) else str(r)
        if sources is not None:
            c["source"] = None if sources[i] is None else str(sources[i])
    return mistakes + correct


def _round_robin(groups: dict, k: int) -> list:
    """`k` items taken in turn from each group (each already best first), groups ordered by their
    best item as given."""
    queues = [list(v) for v in groups.values() if len(v)]
    out: list = []
    while len(out) < k and queues:
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def _correct(task: str, y_true, scores, label_names: list[str], k: int, threshold) -> list[dict]:
    if task == "classification":
        y = np.asarray(y_true).astype(int).reshape(-1)
        P = np.asarray(scores, dtype=float)
        pred = P.argmax(axis=1)
        conf = P[np.arange(len(y)), pred]
        right = np.flatnonzero(pred == y)
        right = right[np.argsort(-conf[right], kind="stable")]
        groups: dict = {}
        for i in right:  # classes in order of their most confident correct example
            groups.setdefault(int(pred[i]), []).append(int(i))
        return [{"index": i, "kind": "correct", "true": label_names[y[i]], "predicted": label_names[pred[i]],
                 "confidence": float(conf[i]), "true_prob": float(P[i, y[i]]), "target": label_names[pred[i]]}
                for i in _round_robin(groups, k)]
    if task == "multilabel":
        Y = np.asarray(y_true).astype(int)
        P = np.asarray(scores, dtype=float)
        pred = (P >= np.asarray(threshold, dtype=float)).astype(int)
        # how sure the model was of its least sure decision; predictions with a label first
        sure = np.where(pred == 1, P, 1.0 - P).min(axis=1)
        right = np.flatnonzero((pred == Y).all(axis=1))
        right = right[np.lexsort((-sure[right], -pred[right].any(axis=1).astype(int)))]
        top = P.argmax(axis=1)
        groups = {}
        for i in right:
            groups.setdefault(int(top[i]), []).append(int(i))
        return [{"index": i, "kind": "correct", "true": [label_names[j] for j in np.flatnonzero(Y[i])],
                 "predicted": [label_names[j] for j in np.flatnonzero(pred[i])], "confidence": float(sure[i]),
                 "target": label_names[top[i]]}
                for i in _round_robin(groups, k)]
    if task == "regression":
        y = np.asarray(y_true, dtype=float).reshape(-1)
        p = np.asarray(scores, dtype=float).reshape(-1)
        err = np.abs(p - y)
        # the closest quarter (at least k), then k of them spread evenly over the true values
        close = np.argsort(err, kind="stable")[:max(k, len(y) // 4)]
        close = close[np.argsort(y[close], kind="stable")]
        picks = np.unique(np.round(np.linspace(0, len(close) - 1, min(k, len(close)))).astype(int))
        return [{"index": int(i), "kind": "correct", "true": float(y[i]), "predicted": float(p[i]),
                 "error": float(err[i]), "target": None}
                for i in close[picks]]
    raise ValueError(f"task {task!r} is not one of classification, multilabel, regression")

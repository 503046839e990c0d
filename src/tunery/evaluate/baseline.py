"""The TF-IDF baseline beside every run: a fine-tune that does not beat it has not earned its cost.

Features: word 1-2-grams plus char_wb 2-5-grams (both sublinear tf, float32). The char n-grams add
about 2.5 accuracy points on SST-2 (80.5 -> 83.0 dev) and cover Chinese text, which has no spaces
for the word tokenizer; they are dropped when the baseline would have to fit many models on many
texts, so the whole baseline stays well under 30 s on 67k short texts on 2 cores (SST-2 train:
about 10 s).

Models: LogisticRegression (classification; multinomial for more than two classes), one binary
LogisticRegression per label (multilabel), Ridge (regression). With many classes the n-grams are
capped (the most frequent kept) so that classes x features stays under _WEIGHT_BUDGET: memory
stays bounded (3,000 classes took 3.9 GB uncapped).
"""

from __future__ import annotations

import logging

import numpy as np

from tunery.evaluate.metrics import compute_metrics, tune_threshold

log = logging.getLogger(__name__)

# Fit char n-grams while (texts x models fitted) stays under this; above it, word n-grams only.
_CHAR_BUDGET = 300_000
# The linear models hold (classes x features) weights, and lbfgs keeps about 20 arrays of that size:
# 3,000 classes x 8,000 features took 3.9 GB. Features are capped (the most frequent n-grams kept)
# so that classes x features stays under this, about 40 MB an array. With a few classes the cap
# (1.25 million n-grams per view for two) is above any vocabulary the vectorizers keep.
_WEIGHT_BUDGET = 5_000_000
_MIN_FEATURES = 1_000
_C = 2.0  # inverse L2 strength; 1-4 are within half a point of each other on SST-2


def _features(train_texts: list[str], eval_texts: dict[str, list[str]], *, chars: bool,
              max_features: int | None = None):
    """TF-IDF views of the texts; each view keeps at most `max_features` n-grams (None: no cap)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(train_texts)
    # min_df=2 drops hapaxes (noise, and most of the vocabulary) once there is data to spare
    min_df = 2 if n >= 1000 else 1
    vecs = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                            dtype=np.float32, token_pattern=r"(?u)\b\w+\b", max_features=max_features)]
    if chars:
        vecs.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                    min_df=3 if n >= 1000 else 1,
                                    max_features=min(200_000, max_features or 200_000),
                                    dtype=np.float32))
    train_parts, eval_parts = [], {k: [] for k in eval_texts}
    for vec in vecs:
        try:
            train_parts.append(vec.fit_transform(train_texts))
        except ValueError:  # empty vocabulary (e.g. only punctuation); skip this view
            continue
        for k, texts in eval_texts.items():
            eval_parts[k].append(vec.transform(texts))
    if not train_parts:
        raise ValueError("the baseline found no words or characters in the training texts")
    X = hstack(train_parts).tocsr()
    return X, {k: hstack(v).tocsr() for k, v in eval_parts.items()}


def _fit_binary(X, y: np.ndarray, seed: int):
    """Column probability function for one 0/1 target; constant targets give constant scores."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return lambda Z: np.full(Z.shape[0], float(y[0]))
    model = LogisticRegression(C=_C, solver="liblinear", max_iter=1000, random_state=seed).fit(X, y)
    return lambda Z: model.predict_proba(Z)[:, 1]


def baseline_scores(
    task: str, train_texts: list[str], train_y, eval_texts: dict[str, list[str]], *,
    n_labels: int, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fit on the training texts; scores for each split in the data contract's shape:
    classification (N, n_labels) probabilities (0 for classes absent from train), multilabel
    (N, n_labels) probabilities, regression (N,) predictions."""
    # multinomial LR costs grow with the class count too, roughly a third as fast as one-vs-rest
    n_models = {"multilabel": n_labels, "classification": -(-n_labels // 3)}.get(task, 1)
    chars = len(train_texts) * n_models <= _CHAR_BUDGET
    cap = None if task == "regression" else max(_MIN_FEATURES, _WEIGHT_BUDGET // max(n_labels, 1) // (1 + chars))
    X, Z = _features(list(train_texts), eval_texts, chars=chars, max_features=cap)
    log.info("baseline: %s on %d texts, %d features (at most %s per view)", task, X.shape[0], X.shape[1],
             f"{cap:,}" if cap else "all")

    if task == "classification":
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(train_y).astype(int).reshape(-1)
        classes = np.unique(y)
        out = {}
        if len(classes) == 1:
            for k, Zk in Z.items():
                probs = np.zeros((Zk.shape[0], n_labels))
                probs[:, classes[0]] = 1.0
                out[k] = probs
            return out
        solver = "liblinear" if len(classes) == 2 else "lbfgs"
        model = LogisticRegression(C=_C, solver=solver, max_iter=1000, random_state=seed).fit(X, y)
        for k, Zk in Z.items():
            probs = np.zeros((Zk.shape[0], n_labels))
            probs[:, model.classes_] = model.predict_proba(Zk)  # absent classes keep 0
            out[k] = probs
        return out

    if task == "multilabel":
        Y = np.asarray(train_y).astype(int)
        if Y.ndim != 2 or Y.shape[1] != n_labels:
            raise ValueError(f"multilabel train_y has shape {Y.shape}; expected (N, {n_labels})")
        fits = [_fit_binary(X, Y[:, j], seed) for j in range(n_labels)]
        return {k: np.stack([f(Zk) for f in fits], axis=1) for k, Zk in Z.items()}

    if task == "regression":
        from sklearn.linear_model import Ridge

        model = Ridge(alpha=1.0, random_state=seed).fit(X, np.asarray(train_y, dtype=float))
        return {k: model.predict(Zk).astype(float) for k, Zk in Z.items()}

    raise ValueError(f"task {task!r} is not one of classification, multilabel, regression")


def baseline_metrics(
    task: str, train_texts: list[str], train_y, eval_data: dict[str, tuple[list[str], np.ndarray]],
    *, label_names: list[str], threshold=None, seed: int = 0, calibration_bins: int = 10,
) -> dict[str, dict]:
    """Fit the baseline and return `compute_metrics` for each split of `eval_data`
    ({split: (texts, y_true)}).

    Multilabel `threshold`: None tunes the baseline's own threshold on the "validation" split when
    there is one (0.5 otherwise), as the model's is, so the comparison is fair.
    """
    texts = {k: list(v[0]) for k, v in eval_data.items()}
    scores = baseline_scores(task, train_texts, train_y, texts,
                             n_labels=max(len(label_names), 1), seed=seed)
    if task == "multilabel" and threshold is None:
        val = eval_data.get("validation")
        threshold = tune_threshold(val[1], scores["validation"]) if val is not None else 0.5
    return {
        k: compute_metrics(task, eval_data[k][1], scores[k], label_names,
                           threshold=0.5 if threshold is None else threshold,
                           calibration_bins=calibration_bins)
        for k in eval_data
    }

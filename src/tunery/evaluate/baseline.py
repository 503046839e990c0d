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

The fitted baseline is a `TfidfModel`, which a run directory can hold (`tunery baseline`): `save`
writes the settings and vocabularies as JSON (tfidf.json) and the idf vectors and linear weights
as safetensors (tfidf.safetensors); `load` rebuilds sklearn's vectorizers and linear models from
them (nothing is unpickled, no code runs), so a loaded model scores exactly as the fitted one.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunery.errors import RunError
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

SETTINGS_FILE = "tfidf.json"
WEIGHTS_FILE = "tfidf.safetensors"
FORMAT = "tunery-tfidf"
FORMAT_VERSION = 1
# What of a vectorizer's settings is saved: everything that shapes its analyzer and weighting
# (fit-only settings such as min_df and max_features are already in its vocabulary).
_VIEW_PARAMS = ("analyzer", "ngram_range", "lowercase", "token_pattern", "strip_accents", "binary", "norm",
                "use_idf", "smooth_idf", "sublinear_tf")
_ANALYZERS = ("word", "char", "char_wb")


def _vectorizers(n: int, *, chars: bool, max_features: int | None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # min_df=2 drops hapaxes (noise, and most of the vocabulary) once there is data to spare
    min_df = 2 if n >= 1000 else 1
    vecs = [TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                            dtype=np.float32, token_pattern=r"(?u)\b\w+\b", max_features=max_features)]
    if chars:
        vecs.append(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                    min_df=3 if n >= 1000 else 1,
                                    max_features=min(200_000, max_features or 200_000),
                                    dtype=np.float32))
    return vecs


def _fit_views(train_texts: list[str], *, chars: bool, max_features: int | None):
    """The fitted TF-IDF views of the texts (each keeps at most `max_features` n-grams; None: no
    cap) and the training matrix."""
    from scipy.sparse import hstack

    fitted, parts = [], []
    for vec in _vectorizers(len(train_texts), chars=chars, max_features=max_features):
        try:
            parts.append(vec.fit_transform(train_texts))
        except ValueError:  # empty vocabulary (e.g. only punctuation); skip this view
            continue
        fitted.append(vec)
    if not fitted:
        raise ValueError("the baseline found no words or characters in the training texts")
    return fitted, hstack(parts).tocsr()


def _logistic(solver: str, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=_C, solver=solver, max_iter=1000, random_state=seed)


@dataclass
class TfidfModel:
    """A fitted TF-IDF baseline: its vectorizers (views), and per task
    classification: `classes` seen in training and one LogisticRegression (None with one class);
    multilabel: per label a binary LogisticRegression, or the constant score of a label that is
    always (or never) on in training; regression: one Ridge."""

    task: str
    n_labels: int
    views: list = field(default_factory=list)  # fitted sklearn TfidfVectorizer
    linear: object = None  # classification/regression: the estimator; multilabel: list of estimator | float
    classes: list[int] | None = None  # classification: the classes seen in training

    @classmethod
    def fit(cls, task: str, train_texts: list[str], train_y, *, n_labels: int, seed: int = 0) -> TfidfModel:
        """Fit on the training texts and labels (the data contract's arrays: class indices,
        (N, n_labels) multi-hot rows, or values)."""
        if task not in ("classification", "multilabel", "regression"):
            raise ValueError(f"task {task!r} is not one of classification, multilabel, regression")
        # multinomial LR costs grow with the class count too, roughly a third as fast as one-vs-rest
        n_models = {"multilabel": n_labels, "classification": -(-n_labels // 3)}.get(task, 1)
        chars = len(train_texts) * n_models <= _CHAR_BUDGET
        cap = None if task == "regression" else max(_MIN_FEATURES, _WEIGHT_BUDGET // max(n_labels, 1) // (1 + chars))
        views, X = _fit_views(list(train_texts), chars=chars, max_features=cap)
        log.info("baseline: %s on %d texts, %d features (at most %s per view)", task, X.shape[0], X.shape[1],
                 f"{cap:,}" if cap else "all")
        model = cls(task, n_labels, views)
        if task == "classification":
            y = np.asarray(train_y).astype(int).reshape(-1)
            model.classes = [int(c) for c in np.unique(y)]
            if len(model.classes) > 1:
                model.linear = _logistic("liblinear" if len(model.classes) == 2 else "lbfgs", seed).fit(X, y)
        elif task == "multilabel":
            Y = np.asarray(train_y).astype(int)
            if Y.ndim != 2 or Y.shape[1] != n_labels:
                raise ValueError(f"multilabel train_y has shape {Y.shape}; expected (N, {n_labels})")
            # a constant target gives constant scores
            model.linear = [float(Y[0, j]) if Y[:, j].min() == Y[:, j].max()
                            else _logistic("liblinear", seed).fit(X, Y[:, j]) for j in range(n_labels)]
        else:
            from sklearn.linear_model import Ridge

            model.linear = Ridge(alpha=1.0, random_state=seed).fit(X, np.asarray(train_y, dtype=float))
        return model

    @property
    def n_features(self) -> int:
        return sum(len(v.vocabulary_) for v in self.views)

    def features(self, texts: list[str]):
        from scipy.sparse import hstack

        return hstack([v.transform(texts) for v in self.views]).tocsr()

    def scores(self, texts: list[str]) -> np.ndarray:
        """Scores in the data contract's shape: classification (N, n_labels) probabilities (0 for
        classes absent from train), multilabel (N, n_labels) probabilities, regression (N,)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0,)) if self.task == "regression" else np.zeros((0, self.n_labels))
        Z = self.features(texts)
        if self.task == "classification":
            probs = np.zeros((Z.shape[0], self.n_labels))
            if self.linear is None:
                probs[:, self.classes[0]] = 1.0
            else:
                probs[:, self.linear.classes_] = self.linear.predict_proba(Z)  # absent classes keep 0
            return probs
        if self.task == "multilabel":
            return np.stack([np.full(Z.shape[0], h) if isinstance(h, float) else h.predict_proba(Z)[:, 1]
                             for h in self.linear], axis=1)
        return self.linear.predict(Z).astype(float)

    # -- saving and loading: JSON and safetensors, no pickle --------------------------------

    def save(self, directory: str | Path) -> None:
        """Write tfidf.json (settings, vocabularies) and tfidf.safetensors (idf, weights) into
        `directory` (which must exist)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        tensors = {f"idf.{i}": np.ascontiguousarray(v.idf_) for i, v in enumerate(self.views)}
        views = []
        for v in self.views:
            params = {k: v.get_params()[k] for k in _VIEW_PARAMS}
            params["ngram_range"] = list(params["ngram_range"])
            views.append({"params": params, "dtype": np.dtype(v.dtype).name,
                          "vocabulary": {term: int(col) for term, col in v.vocabulary_.items()}})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": self.task, "n_labels": self.n_labels,
               "n_features": self.n_features, "views": views}
        if self.task == "classification":
            doc["classes"] = self.classes
        heads = [self.linear] if self.task != "multilabel" else self.linear
        fitted = [h for h in heads if h is not None and not isinstance(h, float)]
        if self.task == "multilabel":
            doc["constant"] = [h if isinstance(h, float) else None for h in heads]
        if fitted:
            doc["estimator"] = {"kind": type(fitted[0]).__name__, "params": fitted[0].get_params()}
            tensors["coef"] = np.ascontiguousarray(np.concatenate([np.atleast_2d(h.coef_) for h in fitted]))
            tensors["intercept"] = np.ascontiguousarray(np.concatenate([np.atleast_1d(h.intercept_) for h in fitted]))
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        (directory / SETTINGS_FILE).write_text(json.dumps(doc), encoding="utf-8")  # ASCII: any n-gram survives

    @classmethod
    def load(cls, directory: str | Path) -> TfidfModel:
        """The model `save` wrote in `directory`. RunError naming the file when one is missing,
        unreadable, or disagrees with the other (shapes, vocabulary sizes)."""
        directory = Path(directory)
        doc = _read_settings(directory / SETTINGS_FILE)
        tensors = _read_weights(directory / WEIGHTS_FILE)
        model = _build(doc, tensors, directory)
        try:  # settings that only fail when used (a token_pattern that is no regex, a bad norm) fail here
            model.scores(["a text, to check the settings"])
        except (ValueError, TypeError, re.error) as err:
            raise _bad(directory / SETTINGS_FILE, f"its settings do not score a text ({err})") from None
        return model


_FIX = "the run directory is damaged: restore it from a copy or fit the baseline again (tunery baseline)"


def _bad(path: Path, why: str) -> RunError:
    return RunError(f"{path}: {why}; {_FIX}")


def _read_settings(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(path, "missing (a tfidf run keeps its settings and vocabularies there)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(path, f"cannot be read ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"not a TF-IDF model (no \"format\": {FORMAT!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise RunError(f"{path}: format_version {doc.get('format_version')!r}, and this tunery reads "
                       f"{FORMAT_VERSION}; use the tunery version that wrote it, or fit the baseline again")
    return doc


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise _bad(path, "missing (a tfidf run keeps its idf vectors and weights there)")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError...: a damaged file
        raise _bad(path, f"cannot be read ({type(err).__name__}: {err})") from None


def _estimator(doc: dict, path: Path):
    from sklearn.linear_model import LogisticRegression, Ridge

    spec = doc.get("estimator")
    kinds = {"classification": LogisticRegression, "multilabel": LogisticRegression, "regression": Ridge}
    want = kinds[doc["task"]]
    if not isinstance(spec, dict) or spec.get("kind") != want.__name__ or not isinstance(spec.get("params"), dict):
        raise _bad(path, f"'estimator' must be {{\"kind\": {want.__name__!r}, \"params\": {{...}}}} for a "
                         f"{doc['task']} model")

    def new():
        try:
            return want(**spec["params"])
        except TypeError as err:  # a parameter this sklearn does not know
            raise _bad(path, f"estimator params: {err}") from None

    return new


def _build(doc: dict, tensors: dict[str, np.ndarray], directory: Path) -> TfidfModel:
    from sklearn.feature_extraction.text import TfidfVectorizer

    spath, wpath = directory / SETTINGS_FILE, directory / WEIGHTS_FILE
    task, n_labels = doc.get("task"), doc.get("n_labels")
    if task not in ("classification", "multilabel", "regression"):
        raise _bad(spath, f"task {task!r} is not one of classification, multilabel, regression")
    if not isinstance(n_labels, int) or n_labels < (0 if task == "regression" else 1):
        raise _bad(spath, f"n_labels {n_labels!r} is not a count of labels")

    def tensor(name: str, shape: tuple) -> np.ndarray:
        if name not in tensors:
            raise _bad(wpath, f"no tensor {name!r} (it has {', '.join(sorted(tensors)) or 'none'})")
        t = tensors[name]
        if t.shape != shape:
            raise _bad(wpath, f"tensor {name!r} has shape {t.shape}, but {SETTINGS_FILE} needs {shape}")
        return t

    views = []
    for i, view in enumerate(doc.get("views") or []):
        params, vocab = (view.get("params"), view.get("vocabulary")) if isinstance(view, dict) else (None, None)
        if not isinstance(params, dict) or set(params) != set(_VIEW_PARAMS) or not isinstance(vocab, dict):
            raise _bad(spath, f"views[{i}] needs 'params' ({', '.join(_VIEW_PARAMS)}) and 'vocabulary'")
        if params["analyzer"] not in _ANALYZERS:
            raise _bad(spath, f"views[{i}] analyzer {params['analyzer']!r} is not one of {', '.join(_ANALYZERS)}")
        cols = sorted(vocab.values()) if all(isinstance(c, int) for c in vocab.values()) else None
        if cols != list(range(len(vocab))):
            raise _bad(spath, f"views[{i}] vocabulary does not map its n-grams to columns 0..{len(vocab) - 1}")
        try:
            vec = TfidfVectorizer(**{**params, "ngram_range": tuple(params["ngram_range"])},
                                  dtype=np.dtype(view.get("dtype", "float32")).type, vocabulary=vocab)
            vec.idf_ = tensor(f"idf.{i}", (len(vocab),))
        except (TypeError, ValueError) as err:
            raise _bad(spath, f"views[{i}] cannot be rebuilt ({err})") from None
        views.append(vec)
    if not views:
        raise _bad(spath, "no views (vectorizers)")
    n_features = sum(len(v.vocabulary_) for v in views)
    if doc.get("n_features") != n_features:
        raise _bad(spath, f"n_features {doc.get('n_features')!r} disagrees with its vocabularies ({n_features})")

    model = TfidfModel(task, n_labels, views)

    def linear(new, rows: slice | int, classes=None):
        est = new()
        coef = tensors["coef"][rows]
        est.coef_ = coef if task != "regression" else coef.reshape(-1)
        est.intercept_ = tensors["intercept"][rows] if task != "regression" else tensors["intercept"][0]
        if classes is not None:
            est.classes_ = np.asarray(classes)
        est.n_features_in_ = n_features
        return est

    if task == "classification":
        classes = doc.get("classes")
        if (not isinstance(classes, list) or not classes or not all(isinstance(c, int) for c in classes)
                or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= n_labels):
            raise _bad(spath, f"'classes' must list the distinct classes seen in training, each in 0..{n_labels - 1}")
        model.classes = classes
        if len(classes) > 1:
            rows = 1 if len(classes) == 2 else len(classes)
            tensor("coef", (rows, n_features)), tensor("intercept", (rows,))
            model.linear = linear(_estimator(doc, spath), slice(0, rows), classes)
    elif task == "multilabel":
        constant = doc.get("constant")
        if not isinstance(constant, list) or len(constant) != n_labels or not all(
                c is None or (isinstance(c, (int, float)) and math.isfinite(c)) for c in constant):
            raise _bad(spath, f"'constant' must hold {n_labels} entries, a number or null per label")
        fitted = sum(c is None for c in constant)
        if fitted:
            tensor("coef", (fitted, n_features)), tensor("intercept", (fitted,))
            new = _estimator(doc, spath)
        heads, k = [], 0
        for c in constant:
            if c is None:
                heads.append(linear(new, slice(k, k + 1), [0, 1]))
                k += 1
            else:
                heads.append(float(c))
        model.linear = heads
    else:
        tensor("coef", (1, n_features)), tensor("intercept", (1,))
        model.linear = linear(_estimator(doc, spath), slice(0, 1))
    return model


def baseline_scores(
    task: str, train_texts: list[str], train_y, eval_texts: dict[str, list[str]], *,
    n_labels: int, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Fit on the training texts; scores for each split in the data contract's shape:
    classification (N, n_labels) probabilities (0 for classes absent from train), multilabel
    (N, n_labels) probabilities, regression (N,) predictions."""
    model = TfidfModel.fit(task, train_texts, train_y, n_labels=n_labels, seed=seed)
    return {k: model.scores(texts) for k, texts in eval_texts.items()}


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

"""The second Predictor backend: a TF-IDF baseline run (tunery.json "backend": "tfidf", written by
`tunery baseline`). It answers as a transformer run does (`predict`, `predict_file`, `score`), so
every place that takes a run takes this one: `tunery predict`, `evaluate`, `serve`, the registry,
`tunery.load`.

Its model/ folder holds tfidf.json and tfidf.safetensors (see `tunery.evaluate.baseline.TfidfModel`):
loading it reads JSON and arrays and runs no code.

Tokens, for metering (`tunery serve` bills by them like any model): there is no subword tokenizer,
so a token is a word (a run of letters or digits), one punctuation mark, or one CJK character
(Chinese, Japanese kana), counted over the text and its pair. That is how BERT's basic tokenizer
splits text before WordPiece, so a subword model counts the same text as as many tokens or more
(MiniLM-L6, special tokens aside: "The film was great, really." 7 and 7 here; "I can't believe it's
2026!" 11, 10 here, as it splits 2026 in two). The whole text is read: no max_length.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tunery.predict import Predictor

BACKEND = "tfidf"

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Metered tokens of one text: words, punctuation marks and CJK characters."""
    return len(_TOKEN.findall(text))


def joined(texts: list[str], pairs: list[str] | None) -> list[str]:
    """What the TF-IDF model reads: the text, or the text and its pair joined as in training."""
    return texts if pairs is None else [f"{a} [SEP] {b}" for a, b in zip(texts, pairs)]


class TfidfPredictor(Predictor):
    """A loaded TF-IDF run. `model` is its `TfidfModel`; there is no tokenizer (so no explanations)."""

    explainable = False
    supports_gradients = False

    def score(self, texts: list[str], pairs: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        texts, pairs = self._check_inputs(texts, pairs)
        tokens = np.fromiter((count_tokens(t) + (count_tokens(p) if pairs is not None else 0)
                              for t, p in zip(texts, pairs if pairs is not None else texts)),
                             dtype=np.int64, count=len(texts))
        return self.model.scores(joined(texts, pairs)), tokens


def load_tfidf(run_dir: Path, meta: dict, *, batch_size: int = 64, threads: int | None = None) -> TfidfPredictor:
    """The TF-IDF run at `run_dir` (its tunery.json already read into `meta`; `threads` does
    not apply: scoring is one sparse product). RunError naming the
    file when the model's files are missing, damaged or disagree with tunery.json."""
    from tunery.errors import RunError
    from tunery.evaluate.baseline import SETTINGS_FILE, TfidfModel

    model = TfidfModel.load(run_dir / "model")
    n_labels = len(meta["label_names"])
    if model.task != meta["task"] or (model.task != "regression" and model.n_labels != n_labels):
        raise RunError(f"{run_dir / 'model' / SETTINGS_FILE}: a {model.task} model of {model.n_labels} labels, but "
                       f"{run_dir / 'tunery.json'} says {meta['task']} with {n_labels} labels; the run directory "
                       "is damaged: restore it from a copy or fit the baseline again (tunery baseline)")
    return TfidfPredictor(model, None, meta, run_dir=run_dir, batch_size=batch_size, precision="fp32")

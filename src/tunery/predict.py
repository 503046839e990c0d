"""Predictions from a run directory: in Python (`tunery.load(RUN).predict([...])`) and over files
of any size (streamed in chunks, so a million-row file never fills memory)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tunery.errors import DataError
from tunery.rundir import find_run, read_meta
from tunery.tasks import Task, get_task
from tunery.train.batching import encode

log = logging.getLogger(__name__)


class Predictor:
    """A loaded model with its tokenizer and run metadata. Build one with `load(run)`."""

    def __init__(self, model, tokenizer, meta: dict, *, run_dir: Path | None = None, batch_size: int = 64,
                 precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.run_dir = run_dir
        self.batch_size = batch_size
        self.precision = precision  # "fp32" or "bf16" (autocast, as training evaluates with precision auto)

    @property
    def task(self) -> Task:
        return get_task(self.meta["task"], label_mean=self.meta.get("label_mean", 0.0),
                        label_scale=self.meta.get("label_scale", 1.0))

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold") or 0.5)

    def predict_scores(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Probabilities (N, C) for classification tasks, values (N,) for regression."""
        return self.score(texts, pairs)[0]

    def score(self, texts: list[str], pairs: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores as `predict_scores`, and the number of tokens the model read for each text (N,)."""
        from tunery.train.loop import predict_scores

        texts = [str(t) for t in texts]
        if pairs is not None:
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs; give one pair per text")
            pairs = [str(t) for t in pairs]
        elif self.meta.get("text_pair_column"):
            raise ValueError(f"this model reads text pairs ({self.meta['text_column']}, "
                             f"{self.meta['text_pair_column']}); pass pairs=[...]")
        data = encode(self.tokenizer, texts, pairs, [None] * len(texts), max_length=self.meta["max_length"])
        tokens = data.lengths
        if not len(data):
            n = len(self.label_names)
            return (np.zeros((0, n)) if self.meta["task"] != "regression" else np.zeros((0,))), tokens
        with _autocast(self.model, self.precision):
            scores = predict_scores(self.model, self.task, data, batch_size=self.batch_size,
                                    pad_id=self.tokenizer.pad_token_id or 0)
        return scores, tokens

    def predict(self, texts: list[str] | str, pairs: list[str] | None = None) -> list[dict]:
        """One dict per text: label, score and per-class probabilities (labels for multi-label,
        value for regression)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if single and isinstance(pairs, str):
            pairs = [pairs]
        out = self.task.decode(self.predict_scores(texts, pairs), self.label_names, threshold=self.threshold)
        return out[0] if single else out

    def prediction_columns(self, scores: np.ndarray) -> dict[str, list]:
        """Output columns for a file: pred_label, pred_score, pred_prob_<label> (no clash with
        the input's own columns)."""
        task = self.meta["task"]
        if task == "regression":
            return {"pred_value": [float(v) for v in scores]}
        names = self.label_names
        cols: dict[str, list] = {}
        if task == "classification":
            top = scores.argmax(axis=1)
            cols["pred_label"] = [names[k] for k in top]
            cols["pred_score"] = scores[np.arange(len(top)), top].astype(float).tolist()
        else:
            cols["pred_labels"] = ["|".join(n for n, p in zip(names, row) if p >= self.threshold) for row in scores]
            cols["pred_score"] = scores.max(axis=1).astype(float).tolist() if len(scores) else []
        for k, n in enumerate(names):
            cols[f"pred_prob_{n}"] = scores[:, k].astype(float).tolist()
        return cols

    def predict_file(self, input_path: str | Path, output_path: str | Path, *, text_column: str | None = None,
                     text_pair_column: str | None = None, batch_rows: int = 10_000, on_chunk=None) -> int:
        """Stream `input_path` in chunks, write input columns plus predictions to `output_path`
        (csv, tsv, jsonl or parquet by suffix; written atomically). Returns the row count."""
        from tunery.data.load import TableWriter, iter_table

        text_column = text_column or self.meta["text_column"]
        text_pair_column = text_pair_column or self.meta.get("text_pair_column")
        rows = 0
        with TableWriter(output_path) as writer:
            for chunk in iter_table(input_path, batch_rows=batch_rows):
                for col in filter(None, (text_column, text_pair_column)):
                    if col not in chunk.columns:
                        cols = ", ".join(str(c) for c in chunk.columns)
                        raise DataError(f"{input_path}: no column {col!r} (columns: {cols}); "
                                        "name the text column with --text-column")
                texts = chunk[text_column].fillna("").astype(str).tolist()
                pairs = chunk[text_pair_column].fillna("").astype(str).tolist() if text_pair_column else None
                scores = self.predict_scores(texts, pairs)
                out = chunk.copy()
                for name, values in self.prediction_columns(scores).items():
                    out[name] = values
                writer.write(out)
                rows += len(chunk)
                if on_chunk:
                    on_chunk(rows)
        return rows


def _autocast(model, precision: str):
    import contextlib

    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def load(run: str | Path, *, batch_size: int = 64, precision: str = "fp32") -> Predictor:
    """Load a completed run by path, run name or registry name (`sentiment@2`).

    ``precision``: "fp32"; "bf16" (autocast: faster on CPUs with AVX512-BF16/AMX and on GPUs, with
    probabilities that differ in the third decimal); "auto" picks bf16 where it is fast."""
    from tunery.train.loop import resolve_precision

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunery.pipeline import _quiet_transformers

    run_dir = find_run(run)
    meta = read_meta(run_dir)
    _quiet_transformers()
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    model.eval()
    precision = resolve_precision(precision)
    if precision == "bf16":
        # Autocast would cast every weight to bf16 on every call (most of the time of a one-text
        # request); cast them once instead. Outputs are the same as under autocast alone.
        import torch

        model.to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    return Predictor(model, tokenizer, meta, run_dir=run_dir, batch_size=batch_size, precision=precision)

"""Predictions from a run directory: in Python (`tunery.load(RUN).predict([...])`) and over files
of any size (streamed in chunks, so a million-row file never fills memory)."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from tunery.errors import DataError, RunError
from tunery.refs import find_run
from tunery.rundir import META, read_meta
from tunery.spelling import as_read, read_speller
from tunery.tasks import Task, get_task
from tunery.inference import Encoded, encode, predict_scores, quiet_transformers, resolve_device, resolve_precision

log = logging.getLogger(__name__)

# keys of tunery.json a Predictor reads; a file without them is damaged, whatever else it holds
_META_KEYS = ("task", "label_names", "max_length", "text_column")


class PredictInputError(DataError, ValueError):
    """Texts or pairs given to a Predictor cannot be scored (also a ValueError, as before)."""


def _text_list(values, what: str, call: str) -> list[str]:
    """`values` as a list of strings: one string is one text; numbers become their text; None,
    NaN, bytes and nested values are refused with their positions."""
    if isinstance(values, str):
        return [values]
    if values is None or isinstance(values, (bytes, Mapping)) or not isinstance(values, Iterable):
        shown = "None" if values is None else type(values).__name__
        raise PredictInputError(f"{what} is {shown}: pass a list of strings, e.g. {call}")
    out: list[str] = []
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, numbers.Number) and not isinstance(v, bool) and not (
                isinstance(v, numbers.Real) and math.isnan(v)):
            out.append(str(v))
        else:
            missing = (v is None or (isinstance(v, numbers.Real) and math.isnan(v))
                       or type(v).__name__ in ("NAType", "NaTType"))
            bad.append((i, "missing" if missing else type(v).__name__))
    if bad:
        where = ", ".join(f"{what}[{i}] is {kind}" for i, kind in bad[:5]) + (f" (and {len(bad) - 5} more)"
                                                                             if len(bad) > 5 else "")
        fix = ("give '' for a missing text (pandas: series.fillna(''))" if any(k == "missing" for _, k in bad)
               else "give each text as a string (decode bytes, join lists)")
        raise PredictInputError(f"{where}: {fix}")
    return out


class Predictor:
    """A loaded model with its tokenizer and run metadata. Build one with `load(run)`."""

    supports_gradients = True  # explanation methods that need gradients (IG) run on this backend
    explainable = True  # it reads tokens, so tunery.explain can map its scores back to words
    speller = None  # tunery.spelling.Speller of a run trained with model.correct_typos (set by `load`)

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
    def threshold(self) -> float | list[float]:
        """The multi-label decision threshold: one per label (tunery.json "thresholds", in
        label_names order) when the run tuned them, else the global "threshold"."""
        per = self.meta.get("thresholds")
        if per is not None:
            if len(per) != len(self.label_names):
                raise ValueError(f"tunery.json in {self.run_dir}: 'thresholds' has {len(per)} values for "
                                 f"{len(self.label_names)} labels; remove it to use the global 'threshold'")
            return [float(t) for t in per]
        return float(self.meta.get("threshold") or 0.5)

    def predict_scores(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Probabilities (N, C) for classification tasks, values (N,) for regression."""
        return self.score(texts, pairs)[0]

    def score(self, texts: list[str], pairs: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores as `predict_scores`, and the number of tokens the model read for each text (N,)."""
        texts, pairs = self.inputs(texts, pairs)
        if not texts:  # the tokenizer cannot take an empty batch
            n = len(self.label_names)
            empty = np.zeros((0, n)) if self.meta["task"] != "regression" else np.zeros((0,))
            return empty, np.zeros((0,), dtype=np.int64)
        data = encode(self.tokenizer, texts, pairs, [None] * len(texts), max_length=self.meta["max_length"])
        return self.encoded_scores(data), data.lengths

    def encoded_scores(self, data: Encoded) -> np.ndarray:
        """The task's scores for already tokenised rows (what every backend implements)."""
        with _autocast(self.model, self.precision):
            return predict_scores(self.model, self.task, data, batch_size=self.batch_size,
                                  pad_id=self.tokenizer.pad_token_id or 0)

    def explain(self, texts: list[str] | str, pairs: list[str] | None = None, *, method: str = "ig", target=None,
                options: dict | None = None, seed: int = 0, faithfulness: bool = False):
        """Which words drove each prediction: one `tunery.explain.Explanation` per text (one for a
        single string). method: ig, shap, lime or occlusion; target: a label name or index (default
        the predicted one); options: the method's (e.g. {"steps": 100} for IG, {"samples": 500} for
        LIME/SHAP); seed: LIME and SHAP repeat exactly for the same seed; faithfulness: also measure
        comprehensiveness, sufficiency and the correlation with leave-one-out, beside random's."""
        from tunery.explain import explain

        single = isinstance(texts, str)
        out = explain(self, texts, pairs, method=method, target=target, options=options, seed=seed,
                      with_faithfulness=faithfulness)
        return out[0] if single else out

    def inputs(self, texts, pairs=None) -> tuple[list[str], list[str] | None]:
        """Texts and pairs as this run's model reads them: checked (`_check_inputs`), then corrected
        where the run was trained with model.correct_typos. What `score` and `tunery.explain` read."""
        return as_read(self.speller, *self._check_inputs(texts, pairs))

    def _check_inputs(self, texts, pairs) -> tuple[list[str], list[str] | None]:
        """Texts and pairs as lists of strings that fit this model: the same rules as the server,
        which answers 422 where this raises PredictInputError."""
        texts = _text_list(texts, "texts", "predict(['great film'])")
        pair_column = self.meta.get("text_pair_column")
        if pairs is None:
            if pair_column:
                raise PredictInputError(
                    f"this model reads text pairs (columns {self.meta['text_column']!r} and {pair_column!r}): "
                    f"pass pairs=[...], one second text per text")
            return texts, None
        if not pair_column:
            raise PredictInputError(
                f"this model reads single texts (column {self.meta['text_column']!r}), but pairs were given: "
                "leave out pairs=")
        pairs = _text_list(pairs, "pairs", "predict(['a question'], pairs=['its answer'])")
        if len(pairs) != len(texts):
            raise PredictInputError(f"{len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        return texts, pairs

    def predict(self, texts: list[str] | str, pairs: list[str] | None = None) -> list[dict]:
        """One dict per text: label, score and per-class probabilities (labels for multi-label,
        value for regression)."""
        single = isinstance(texts, str)
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
            on = scores >= np.asarray(self.threshold, dtype=float)
            cols["pred_labels"] = ["|".join(n for n, hit in zip(names, row) if hit) for row in on]
            cols["pred_score"] = scores.max(axis=1).astype(float).tolist() if len(scores) else []
        for k, n in enumerate(names):
            cols[f"pred_prob_{n}"] = scores[:, k].astype(float).tolist()
        return cols

    def predict_file(self, input_path: str | Path, output_path: str | Path, *, text_column: str | None = None,
                     text_pair_column: str | None = None, batch_rows: int = 10_000, on_chunk=None) -> int:
        """Stream `input_path` in chunks, write input columns plus predictions to `output_path`
        (csv, tsv, jsonl or parquet by suffix; written atomically: on any failure nothing is left
        at `output_path`, nor a partial file beside it). Returns the row count; an input without
        rows gives an output with the columns only."""
        from tunery.data.load import TableWriter, iter_table

        if text_pair_column and not self.meta.get("text_pair_column"):
            raise DataError(f"text pair column {text_pair_column!r}: this model reads single texts (column "
                            f"{self.meta['text_column']!r}); leave out --text-pair-column")
        text_column = text_column or self.meta["text_column"]
        text_pair_column = text_pair_column or self.meta.get("text_pair_column")
        rows, chunks = 0, 0
        writer = TableWriter(output_path)
        try:
            for chunk in iter_table(input_path, batch_rows=batch_rows):
                for col in filter(None, (text_column, text_pair_column)):
                    if col not in chunk.columns:
                        cols = ", ".join(str(c) for c in chunk.columns)
                        raise DataError(f"{input_path}: no column {col!r} (columns: {cols}); "
                                        "name the text column with --text-column")
                self._write_predictions(writer, output_path, chunk, text_column, text_pair_column)
                rows, chunks = rows + len(chunk), chunks + 1
                if on_chunk:
                    on_chunk(rows)
            if not chunks:  # no chunk at all (an empty parquet or jsonl file): columns only
                self._write_predictions(writer, output_path, _empty_frame(input_path, text_column, text_pair_column),
                                        text_column, text_pair_column)
            _writing(output_path, writer.close)
        except BaseException:
            writer.abort()  # removes the partial file even when its close fails (full disk)
            raise
        return rows

    def _write_predictions(self, writer, output_path, chunk, text_column: str, text_pair_column: str | None) -> None:
        texts = _file_texts(chunk, text_column, output_path)
        pairs = _file_texts(chunk, text_pair_column, output_path) if text_pair_column else None
        scores = self.predict_scores(texts, pairs)
        out = chunk.copy()
        for name, values in self.prediction_columns(scores).items():
            out[name] = values
        _writing(output_path, writer.write, out)


def _file_texts(chunk, column: str, output_path) -> list[str]:
    """A chunk's column as texts: missing values are '', numbers their text; bytes, lists and
    structs (Parquet/JSONL) are refused with their rows, never scored as their Python repr."""
    from tunery.data.load import value_kind

    values = chunk[column]
    nested = values.map(lambda v: value_kind(v) in ("bytes", "list", "dict")).to_numpy(dtype=bool)
    if nested.any():
        rows = (values.index[nested] + 1).tolist()  # iter_table: a chunk's index + 1 is the row number
        shown = ", ".join(map(str, rows[:5])) + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")
        kind = type(values[nested].iloc[0]).__name__
        raise DataError(f"column {column!r}, row {shown}: a {kind} value, not a text; predictions for "
                        f"{output_path} need plain text in that column (decode bytes, join lists, or "
                        "choose another column with --text-column)")
    return values.fillna("").astype(str).tolist()


def _empty_frame(input_path, text_column: str, text_pair_column: str | None):
    """The input's columns with no rows: the file's schema where it has one (parquet), else the
    text columns the model reads."""
    import pandas as pd

    if str(input_path).endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            return pq.read_schema(input_path).empty_table().to_pandas()
        except Exception:  # noqa: BLE001 - iter_table read the file; fall back to the known columns
            pass
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in filter(None, (text_column, text_pair_column))})


def _writing(output_path, fn, *args):
    """Run a write to the output table; an OSError (a full disk, a lost mount) becomes a DataError
    naming the file, the cause and the fix."""
    try:
        return fn(*args)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise DataError(f"could not write the predictions to {output_path}: {reason}; nothing was kept there. "
                        "Free space (or fix the cause) and run again, or write elsewhere with -o") from err


def _autocast(model, precision: str):
    import contextlib

    import torch

    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


# tunery.json "backend" -> (module, loader): each loader takes (run_dir, meta, batch_size=, threads=)
BACKENDS = {"tfidf": ("tunery.predict_tfidf", "load_tfidf"), "onnx": ("tunery.predict_onnx", "load_onnx")}


def load(run: str | Path, *, batch_size: int = 64, precision: str = "fp32", threads: int | None = None,
         device: str = "cpu") -> Predictor:
    """Load a completed run by path, run name or registry name (`sentiment@2`).

    ``precision``: "fp32"; "bf16" (autocast: faster on CPUs with AVX512-BF16/AMX and on GPUs, with
    probabilities that differ in the third decimal); "auto" picks bf16 where it is fast. Applies to
    transformers runs; an ONNX run's precision is its graph's (fp32 or int8).
    ``threads``: intra-op threads for inference (None: the engine's default, one per core). For a
    transformers run this is torch's process-wide setting; an ONNX run's session keeps its own.
    ``device``: where a transformers run's model runs: "cpu" (the default, as `tunery serve` runs it),
    "cuda", or "auto" (the GPU where torch sees one); ValueError for anything else or "cuda" without a
    GPU. An ONNX or TF-IDF run runs on the CPU whatever it says.

    Raises RunError (a TuneryError) naming the run and the fix when it is missing, unfinished or damaged.
    The backend is tunery.json's "backend": a TF-IDF run (from `tunery baseline`) loads as a
    `tunery.predict_tfidf.TfidfPredictor`, an ONNX run (from `tunery compress`) as a
    `tunery.predict_onnx.OnnxPredictor`."""
    device = resolve_device(device)  # a bad value fails before anything loads
    if not isinstance(run, (str, os.PathLike)) or not str(run).strip():
        raise RunError(f"run {run!r}: give a run directory, run name or registry name, e.g. "
                       "tunery.load('runs/my-run') or tunery.load('sentiment@2') (`tunery runs list` shows them)")
    try:
        run_dir = find_run(run)
    except (OSError, ValueError) as err:  # a path the filesystem refuses (too long, a NUL byte, ...)
        raise RunError(f"run {str(run)!r} cannot be looked up ({err}); give a run directory, run name or "
                       "registry name (`tunery runs list` shows them)") from None
    meta = _read_run_meta(run_dir)
    backend = meta.get("backend", "transformers")
    if backend != "transformers":
        if backend not in BACKENDS:
            raise RunError(f"{run_dir / META}: backend {backend!r} is not one this tunery loads "
                           f"(transformers, {', '.join(BACKENDS)}); upgrade tunery or use the version that wrote the run")
        import importlib

        module, loader = BACKENDS[backend]
        predictor = getattr(importlib.import_module(module), loader)(run_dir, meta, batch_size=batch_size,
                                                                     threads=threads)
    else:
        predictor = _load_transformers(run_dir, meta, batch_size=batch_size, precision=precision, threads=threads,
                                       device=device)
    predictor.speller = read_speller(run_dir, meta)  # any backend: an ONNX run of a correcting model corrects too
    return predictor


def _load_transformers(run_dir: Path, meta: dict, *, batch_size: int, precision: str,
                       threads: int | None, device: str = "cpu") -> Predictor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    except Exception as err:  # noqa: BLE001 - OSError, ValueError, SafetensorError...: all a damaged model/
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RunError(f"{run_dir / 'model'}: no loadable model ({type(err).__name__}: {first[:300]}); the run "
                       "directory is damaged or incomplete: restore it from a copy or train the run again") from err
    model.to(device)
    model.eval()
    model.requires_grad_(False)  # inference only: IG's gradients go to its inputs, never to the weights
    precision = resolve_precision(precision)
    if precision == "bf16":
        # Autocast would cast every weight to bf16 on every call (most of the time of a one-text
        # request); cast them once instead. Outputs are the same as under autocast alone.
        import torch

        model.to(torch.bfloat16)
    return Predictor(model, tokenizer, meta, run_dir=run_dir, batch_size=batch_size, precision=precision)


def _read_run_meta(run_dir: Path) -> dict:
    """tunery.json of a run, checked for what a Predictor reads; RunError naming the file if not."""
    path = run_dir / META
    fix = "the run directory is damaged: restore it from a copy or train the run again"
    try:
        meta = read_meta(run_dir)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: cannot be read ({err}); {fix}") from None
    if not isinstance(meta, dict):
        raise RunError(f"{path}: holds a JSON {type(meta).__name__}, not the run's metadata object; {fix}")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise RunError(f"{path}: missing {', '.join(map(repr, missing))}; {fix}")
    try:
        get_task(meta["task"])
    except ValueError as err:
        raise RunError(f"{path}: {err}; {fix}") from None
    return meta

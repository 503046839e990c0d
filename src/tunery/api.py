"""A scikit-learn-like Python API over the same pipeline the CLI runs.

    clf = TextClassifier(backbone="minilm-l6", epochs=2).fit(df, text="review", label="label")
    clf.predict(["great value"])        # -> ["positive"]
    clf.evaluate(test_df)               # -> metrics beside the TF-IDF baseline
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunery.config import config_from_dict
from tunery.errors import DataError, RunError

log = logging.getLogger(__name__)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _check_data(data: Any, what: str, columns: tuple[str | None, ...] = ()) -> None:
    """Refuse, before anything is written, data that is neither a DataFrame nor a path, and a
    DataFrame without the named columns."""
    if isinstance(data, (str, Path)):
        if not str(data).strip():
            raise DataError(f"{what} is an empty path: give a DataFrame or the path of a csv, tsv, jsonl or parquet file")
        return
    import pandas as pd

    if not isinstance(data, pd.DataFrame):
        raise DataError(f"{what} must be a pandas DataFrame or a file path, not {type(data).__name__}")
    have = [str(c) for c in data.columns]
    for col in filter(None, columns):
        if col not in have:
            raise DataError(f"{what} has no column {col!r} (columns: {', '.join(have) or 'none'}); "
                            "name the column with text=, label= or text_pair=")


def _file_path(data: Any, folder: Path, stem: str) -> str:
    """Where `data` is read from: a path as is, a DataFrame's parquet copy (written by `_write`)."""
    if isinstance(data, (str, Path)):
        return str(Path(data).resolve())
    return str((folder / f"{stem}.parquet").resolve())


def _sources(splits: dict[str, Any], files: dict[str, str | None]) -> dict:
    """How data messages name each DataFrame given to fit: "the DataFrame given to fit (train)",
    its rows by their index labels (836, "r17", ...) rather than rows of tunery's parquet copy."""
    import pandas as pd

    from tunery.data.validate import Source

    return {files[split]: Source(f"the DataFrame given to fit ({split})", value.index.tolist())
            for split, value in splits.items() if isinstance(value, pd.DataFrame) and files[split]}


def _write(data: Any, path: str, what: str) -> bool:
    """Write a DataFrame to `path` as parquet (kept, so the run's config stays re-runnable); False
    for a path, which is read where it is.

    Columns are stored as a CSV of the same rows would read (`normalize_frame`): labels 1, 2 and
    "other" in one column become text, which pyarrow would refuse as they are."""
    import pandas as pd
    import pyarrow as pa

    from tunery.data.load import normalize_frame

    if not isinstance(data, pd.DataFrame):
        return False
    data = normalize_frame(data, source=what)  # DataError naming the column where it cannot be stored
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        data.to_parquet(path, index=False)
    except (pa.ArrowException, TypeError, ValueError) as err:
        Path(path).unlink(missing_ok=True)
        raise DataError(f"{what}: cannot store this DataFrame as parquet ({type(err).__name__}: {err}); give each "
                        "column one type (texts as str, labels as str or numbers, multi-labels as lists of str)") from err
    return True


class TextClassifier:
    """Fine-tune a backbone on labelled texts. Works for classification (binary, multi-class),
    multi-label and regression; the task is inferred from the labels unless `task` is given.

    Keyword arguments map to config sections: `epochs`, `lr`, `batch_size`, ... go to `train`;
    `method`, `lora` to `model`; `max_length` to `data`. The constructor only stores them.
    """

    _TRAIN_KEYS = set(__import__("tunery.config", fromlist=["TrainConfig"]).TrainConfig.model_fields)

    def __init__(self, backbone: str = "minilm-l6", *, task: str = "auto", method: str = "full",
                 max_length: int = 128, output_dir: str | Path = "runs", name: str | None = None,
                 **train_options: Any) -> None:
        self.backbone = backbone
        self.task = task
        self.method = method
        self.max_length = max_length
        self.output_dir = output_dir
        self.name = name
        self.train_options = train_options

    def _config(self, files: dict[str, str | None], text, label, text_pair):
        unknown = set(self.train_options) - self._TRAIN_KEYS
        if unknown:
            import difflib

            bad = sorted(unknown)[0]
            close = difflib.get_close_matches(bad, sorted(self._TRAIN_KEYS), n=1)
            raise TypeError(f"TextClassifier got an unknown option {bad!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else ""))
        data = {k: v for k, v in files.items() if v}
        data.update({k: v for k, v in {"text_column": text, "label_column": label,
                                       "text_pair_column": text_pair}.items() if v})
        data["max_length"] = self.max_length
        return config_from_dict({"name": self.name_, "output_dir": str(self.output_dir), "data": data,
                                 "task": {"type": self.task},
                                 "model": {"backbone": self.backbone, "method": self.method},
                                 "train": dict(self.train_options)}, source="TextClassifier")

    def fit(self, data, *, text: str | None = None, label: str | None = None, text_pair: str | None = None,
            validation=None, test=None, callbacks=None, progress: bool | None = None) -> TextClassifier:
        """Fine-tune on `data` (a DataFrame or a csv, tsv, jsonl or parquet path); `validation` and
        `test` the same, else `data` is split 80/10/10. `text`, `label`, `text_pair` name the columns
        (inferred when left out). A DataFrame is stored as parquet under <output_dir>/.data/<name>/, so
        the run's config can be run again.

        progress: a progress bar (steps, loss, samples/s, ETA, validation figures), the one `tunery
            train` shows, on stderr; it also renders in Jupyter. None: the `progress` option (True
            unless `TextClassifier(progress=False)`); False: no bar, progress is logged instead
            (logger "tunery.train", level INFO).
        callbacks: objects called as training goes, beside the bar: subclass
            `tunery.train.callbacks.Callback` and override any of on_train_begin(state, n_train),
            on_step(state), on_log(state, record), on_evaluate(state, record), on_train_end(state).
            `state` has step, total_steps, epoch, best_metric, best_step; `record` holds the figures
            logged (loss, lr, samples_per_s) or evaluated (the validation metrics).

        On failure nothing is kept (no run, no data copy), except a run that can be continued: a
        crash after its first checkpoint or an interruption keeps <output_dir>/<name>.partial and
        its data copy for `tunery train --resume`, and says so in a warning.
        """
        from tunery import pipeline
        from tunery.predict import load
        from tunery.rundir import partial_dir
        from tunery.train.callbacks import RichProgress

        self.name_ = self.name or f"classifier-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
        # Everything that can be checked is checked before the data copy is written: the
        # config (run name, options), the data types and the columns named.
        splits = {"train": data, "validation": validation, "test": test}
        for split, value in splits.items():
            if value is not None or split == "train":
                _check_data(value, "data" if split == "train" else split, (text, label, text_pair))
        folder = Path(self.output_dir) / ".data" / self.name_
        files = {k: None if v is None else _file_path(v, folder, k) for k, v in splits.items()}
        cfg = self._config(files, text, label, text_pair)
        # A name in use is refused before the data copy would overwrite that run's own copy.
        for taken in (Path(self.output_dir) / self.name_, partial_dir(Path(self.output_dir) / self.name_)):
            if taken.exists():
                raise RunError(f"run directory {taken} already exists; choose another name (TextClassifier(name=...)) "
                               "or remove it")
        show = cfg.train.progress if progress is None else progress
        bar = RichProgress(console=_stderr_console()) if show else None
        written: list[Path] = []
        created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
        try:
            for split, value in splits.items():
                if _write(value, files[split], "data" if split == "train" else split):
                    written.append(Path(files[split]))
            from tunery.data.validate import data_sources

            with data_sources(_sources(splits, files)):  # data warnings name the DataFrame, not its copy
                self.run_dir_ = pipeline.train(cfg, callbacks=[*filter(None, [bar]), *(callbacks or [])] or None)
        except BaseException:
            if bar is not None:
                bar.close()
            kept = partial_dir(Path(self.output_dir) / self.name_)
            if (kept / "config.yaml").is_file():  # a resumable run: it reads its data copy
                log.warning("fit stopped; run %s is kept: continue it with `tunery train --resume %s`, or remove "
                            "it%s", kept, kept, f" and its data copy {folder}" if written else "")
            else:  # nothing to continue: take back the data copies and the folders made for them
                for path in written:
                    path.unlink(missing_ok=True)
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()
            raise
        self.predictor_ = load(self.run_dir_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise RuntimeError("this TextClassifier is not fitted yet: call fit(...) or TextClassifier.load(run)")

    @property
    def classes_(self) -> list[str]:
        self._check_fitted()
        return self.predictor_.label_names

    def predict(self, texts, pairs=None) -> list:
        """Labels (classification), lists of labels (multi-label) or values (regression)."""
        self._check_fitted()
        out = self.predictor_.predict([texts] if isinstance(texts, str) else texts, pairs)
        key = {"classification": "label", "multilabel": "labels", "regression": "value"}[self.predictor_.meta["task"]]
        return [o[key] for o in out]

    def predict_proba(self, texts, pairs=None) -> np.ndarray:
        self._check_fitted()
        return self.predictor_.predict_scores(texts, pairs)

    def evaluate(self, data=None) -> dict:
        """Metrics on `data` (a DataFrame or file with the training column names), or on the
        run's test split; the TF-IDF baseline is trained and shown beside."""
        from tunery.pipeline import evaluate_run

        self._check_fitted()
        if data is None:
            return evaluate_run(self.run_dir_)
        _check_data(data, "data")
        from tunery.data.validate import Source, data_sources

        with tempfile.TemporaryDirectory() as tmp:
            path = _file_path(data, Path(tmp), "evaluation")
            if not _write(data, path, "data"):
                return evaluate_run(self.run_dir_, data=path)
            with data_sources({path: Source("the DataFrame given to evaluate", data.index.tolist())}):
                return evaluate_run(self.run_dir_, data=path)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Copy the run directory (model, config, metrics, report; not training checkpoints) to
        `path`, a new (or empty) directory that `tunery.load` and `TextClassifier.load` read.

        A `path` that exists is refused unless `overwrite=True`, which replaces a model saved
        there before (a directory with tunery.json) in one step, and never anything else."""
        from tunery.rundir import META

        self._check_fitted()
        path = Path(path)
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()  # an empty directory: write there
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"cannot save to {str(path)!r}: it already exists; choose a new path, or "
                                      "pass overwrite=True to replace the model saved there")
            if path.is_symlink() or not (path / META).is_file():
                raise FileExistsError(f"cannot overwrite {str(path)!r}: it is not a saved tunery model (no {META}), "
                                      "and overwrite=True replaces only those; choose a new path or remove it first")
        path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{datetime.now().strftime('%H%M%S%f')}"
        staging = path.with_name(f".{path.name}.saving-{tag}")
        try:
            shutil.copytree(self.run_dir_, staging, ignore=shutil.ignore_patterns("checkpoints"))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{tag}")
                os.replace(path, old)
                os.replace(staging, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, run: str | Path) -> TextClassifier:
        from tunery.predict import load

        predictor = load(run)
        clf = cls(backbone=predictor.meta["backbone"], task=predictor.meta["task"])
        clf.predictor_, clf.run_dir_, clf.name_ = predictor, predictor.run_dir, predictor.meta["name"]
        return clf


def auto(data, *, budget: str | float, text: str | None = None, label: str | None = None,
         text_pair: str | None = None, validation=None, test=None, metric: str | None = None, task: str = "auto",
         max_length: int = 128, backbone: str | None = None, output_dir: str | Path = "runs",
         name: str | None = None, workers: int = 1, trials: int | None = None, register: str | None = None,
         **train_options: Any) -> TextClassifier:
    """`tunery auto` in Python: the best model `budget` ("10m", "1h", or seconds) affords on `data`
    (a DataFrame or a file path; `validation`, `test` the same, else split from `data`), returned
    as a fitted TextClassifier. Its `auto_` attribute holds the search's result (leaderboard,
    objective, backbone and why, test metrics beside the TF-IDF baseline, wall time); the
    classifier may be the TF-IDF baseline itself when it beats every trial on validation.

    `backbone` fixes the backbone (default: the largest installed one the budget affords);
    `train_options` fix train keys for every trial (`num_threads=1`); DataFrames are stored as
    parquet under <output_dir>/.data/<name>/ for the trials, which run in processes of their own."""
    from tunery.automl import default_name, run_auto
    from tunery.data.validate import data_sources
    from tunery.tune import parse_duration

    budget_s = parse_duration(budget)
    splits = {"train": data, "validation": validation, "test": test}
    for split, value in splits.items():
        if value is not None or split == "train":
            _check_data(value, "data" if split == "train" else split, (text, label, text_pair))
    unknown = set(train_options) - TextClassifier._TRAIN_KEYS
    if unknown:
        raise TypeError(f"tunery.auto got an unknown option {sorted(unknown)[0]!r}; train keys such as num_threads, "
                        "seed or early_stopping_patience are accepted")
    name = name or default_name(config_from_dict({"data": {"train": "data"}}, source="tunery.automl"))
    folder = Path(output_dir) / ".data" / name
    files = {k: None if v is None else _file_path(v, folder, k) for k, v in splits.items()}
    cols = {"text_column": text, "label_column": label, "text_pair_column": text_pair}
    cfg = config_from_dict({"output_dir": str(output_dir), "task": {"type": task},
                            **({"model": {"backbone": backbone}} if backbone else {}),
                            "data": {**{k: v for k, v in files.items() if v}, **{k: v for k, v in cols.items() if v},
                                     "max_length": max_length},
                            "train": {"progress": False, **train_options}}, source="tunery.automl")
    written: list[Path] = []
    try:
        for split, value in splits.items():
            if _write(value, files[split], "data" if split == "train" else split):
                written.append(Path(files[split]))
        with data_sources(_sources(splits, files)):
            result = run_auto(cfg, budget_s=budget_s, metric=metric, workers=workers, trials=trials, name=name,
                              register=register)
    except BaseException:
        if not (Path(output_dir) / name).exists():  # no run reads the copies: take them back
            for path in written:
                path.unlink(missing_ok=True)
        raise
    clf = TextClassifier.load(result.best_run)
    clf.auto_ = result
    return clf

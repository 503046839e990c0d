"""A scikit-learn-like Python API over the same pipeline the CLI runs.

    clf = TextClassifier(backbone="minilm-l6", epochs=2).fit(df, text="review", label="label")
    clf.predict(["great value"])        # -> ["positive"]
    clf.evaluate(test_df)               # -> metrics beside the TF-IDF baseline
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunery.config import config_from_dict
from tunery.errors import DataError


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
            validation=None, test=None, callbacks=None) -> TextClassifier:
        from tunery import pipeline
        from tunery.predict import load

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
        written: list[Path] = []
        created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
        try:
            for split, value in splits.items():
                if _write(value, files[split], "data" if split == "train" else split):
                    written.append(Path(files[split]))
        except BaseException:  # a later split cannot be stored: take back the earlier copies
            for path in written:
                path.unlink(missing_ok=True)
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        self.run_dir_ = pipeline.train(cfg, callbacks=callbacks)
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
        with tempfile.TemporaryDirectory() as tmp:
            path = _file_path(data, Path(tmp), "evaluation")
            _write(data, path, "data")
            return evaluate_run(self.run_dir_, data=path)

    def save(self, path: str | Path) -> Path:
        """Copy the run directory (model, config, metrics, report) to `path`."""
        self._check_fitted()
        path = Path(path)
        shutil.copytree(self.run_dir_, path, ignore=shutil.ignore_patterns("checkpoints"))
        return path

    @classmethod
    def load(cls, run: str | Path) -> TextClassifier:
        from tunery.predict import load

        predictor = load(run)
        clf = cls(backbone=predictor.meta["backbone"], task=predictor.meta["task"])
        clf.predictor_, clf.run_dir_, clf.name_ = predictor, predictor.run_dir, predictor.meta["name"]
        return clf

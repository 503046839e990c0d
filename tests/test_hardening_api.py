"""The Python API and `tunery predict` against careless input (issue 8): empty input, bad runs,
bad texts and pairs, a bad run name, mixed label types, and a full disk while writing predictions."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import tunery
from tests.conftest import fast_train, make_dataset
from tunery.errors import DataError, RunError, TuneryError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_backbone) -> Path:
    out = tmp_path_factory.mktemp("hardening-api")
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=out / "runs", name="reviews",
                                **fast_train(epochs=1))
    clf.fit(make_dataset("binary", n=60), text="review", label="label")
    return clf.run_dir_


@pytest.fixture(scope="module")
def predictor(run_dir):
    return tunery.load(run_dir)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _cli(*args: str):
    from tunery.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=True)


# -- empty input -------------------------------------------------------------------------------
def test_predict_on_no_texts_gives_an_empty_result(predictor):
    assert predictor.predict([]) == []
    assert predictor.predict_scores([]).shape == (0, 2)
    scores, tokens = predictor.score([])
    assert scores.shape == (0, 2) and tokens.shape == (0,)
    assert tunery.TextClassifier.load(predictor.run_dir).predict([]) == []


@pytest.mark.parametrize("task, labels, shape", [("classification", ["a", "b", "c"], (0, 3)),
                                                 ("multilabel", ["a", "b", "c"], (0, 3)), ("regression", [], (0,))])
def test_every_task_answers_no_texts_with_nothing(task, labels, shape):
    # no model is needed: nothing reaches it
    p = tunery.Predictor(None, None, {"task": task, "label_names": labels, "max_length": 8, "text_column": "x"})
    assert p.predict([]) == [] and p.predict_scores([]).shape == shape
    assert all(v == [] for v in p.prediction_columns(p.predict_scores([])).values())


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_predict_file_with_a_header_only_gives_the_columns_only(predictor, tmp_path, suffix):
    src = tmp_path / "header_only.csv"
    src.write_text("review,id\n", encoding="utf-8")
    out = tmp_path / f"out.{suffix}"
    assert predictor.predict_file(src, out) == 0
    if suffix == "csv":
        assert out.read_text(encoding="utf-8").strip() == \
            "review,id,pred_label,pred_score,pred_prob_negative,pred_prob_positive"
    elif suffix == "parquet":
        frame = pd.read_parquet(out)
        assert len(frame) == 0 and list(frame.columns)[:3] == ["review", "id", "pred_label"]
    else:
        assert out.read_text(encoding="utf-8") == ""
    assert _files(tmp_path) == sorted(["header_only.csv", f"out.{suffix}"])


def test_predict_file_on_an_empty_parquet_keeps_its_schema(predictor, tmp_path):
    src = tmp_path / "empty.parquet"
    pd.DataFrame({"review": pd.Series([], dtype=str), "n": pd.Series([], dtype="int64")}).to_parquet(src)
    out = tmp_path / "out.csv"
    assert predictor.predict_file(src, out) == 0
    assert out.read_text().strip() == "review,n,pred_label,pred_score,pred_prob_negative,pred_prob_positive"


def test_cli_predict_on_a_header_only_file_writes_the_header(run_dir, tmp_path):
    (tmp_path / "header_only.csv").write_text("review\n", encoding="utf-8")
    result = _cli("predict", str(run_dir), "-i", "header_only.csv", "-o", "out.csv")
    assert result.exit_code == 0, result.output
    assert "wrote 0 predictions" in result.output
    assert (tmp_path / "out.csv").read_text().startswith("review,pred_label,pred_score")


# -- bad runs: a clear RunError, never a raw exception --------------------------------------------
@pytest.mark.parametrize("ref", ["", "   ", None, 3])
def test_load_without_a_run_name_says_what_to_give(ref):
    with pytest.raises(RunError, match=r"give a run directory, run name or registry name"):
        tunery.load(ref)


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


@pytest.mark.parametrize("content, expected", [
    ("{not json", r"tunery\.json: cannot be read"),
    ("[1, 2]", r"tunery\.json: holds a JSON list"),
    ('{"task": "classification"}', r"tunery\.json: missing 'label_names'"),
    ("", r"tunery\.json: cannot be read"),
])
def test_load_with_a_corrupt_tunery_json_names_the_file_and_the_fix(run_dir, tmp_path, content, expected):
    copy = _copy_run(run_dir, tmp_path)
    (copy / "tunery.json").write_text(content, encoding="utf-8")
    with pytest.raises(RunError, match=expected) as err:
        tunery.load(copy)
    assert str(copy) in str(err.value) and "train the run again" in str(err.value)


def test_load_with_an_unknown_task_names_the_file_and_the_tasks(run_dir, tmp_path):
    import json

    copy = _copy_run(run_dir, tmp_path)
    meta = json.loads((copy / "tunery.json").read_text(encoding="utf-8"))
    (copy / "tunery.json").write_text(json.dumps({**meta, "task": "ner"}), encoding="utf-8")
    with pytest.raises(RunError, match=r"tunery\.json: unknown task 'ner'; expected classification, multilabel"):
        tunery.load(copy)


def test_load_with_an_empty_model_dir_names_the_dir_and_the_fix(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path)
    shutil.rmtree(copy / "model")
    (copy / "model").mkdir()
    with pytest.raises(RunError, match=r"model: no loadable model .*train the run again") as err:
        tunery.load(copy)
    assert str(copy / "model") in str(err.value)


def test_load_with_damaged_weights_is_a_run_error(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path)
    (copy / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match=r"no loadable model"):
        tunery.load(copy)


# -- bad texts and pairs: the server's 422s, as TuneryErrors (and still ValueErrors) -------------------
@pytest.mark.parametrize("texts, expected", [
    (None, r"texts is None: pass a list of strings"),
    (5, r"texts is int: pass a list of strings"),
    ({"a": 1}, r"texts is dict: pass a list of strings"),
    (["fine", None], r"texts\[1\] is missing: give '' for a missing text"),
    (["fine", float("nan")], r"texts\[1\] is missing"),
    ([b"bytes"], r"texts\[0\] is bytes: give each text as a string"),
    ([["a", "list"]], r"texts\[0\] is list"),
])
def test_predict_refuses_what_is_not_text(predictor, texts, expected):
    with pytest.raises(DataError, match=expected) as err:
        predictor.predict(texts)
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working
    with pytest.raises(TuneryError, match=expected):
        tunery.TextClassifier.load(predictor.run_dir).predict(texts)


def test_numbers_are_texts_as_before(predictor):
    assert len(predictor.predict([1, 2.5, "three"])) == 3


def test_pairs_for_a_single_text_model_are_refused(predictor):
    with pytest.raises(TuneryError, match=r"reads single texts \(column 'review'\), but pairs were given"):
        predictor.predict(["a"], pairs=["b"])
    with pytest.raises(TuneryError, match="but pairs were given"):
        predictor.predict("a", pairs="b")


def test_predict_file_with_a_pair_column_for_a_single_text_model_is_refused(predictor, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("review,other\ngreat,film\n")
    with pytest.raises(DataError, match=r"text pair column 'other': this model reads single texts"):
        predictor.predict_file(src, tmp_path / "out.csv", text_pair_column="other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_pair_model_needs_one_pair_per_text(predictor):
    pair_model = tunery.Predictor(predictor.model, predictor.tokenizer,
                                  predictor.meta | {"text_column": "question", "text_pair_column": "answer"})
    with pytest.raises(TuneryError, match=r"reads text pairs \(columns 'question' and 'answer'\): pass pairs="):
        pair_model.predict(["a"])
    with pytest.raises(TuneryError, match=r"2 texts but 1 pairs: give one pair per text"):
        pair_model.predict(["a", "b"], pairs=["c"])
    with pytest.raises(TuneryError, match=r"pairs\[0\] is missing"):
        pair_model.predict(["a"], pairs=[None])
    assert len(pair_model.predict(["a", "b"], pairs=["c", "d"])) == 2
    assert pair_model.predict([], pairs=[]) == []


# -- fit: everything checked before anything is written -----------------------------------------------
@pytest.mark.parametrize("kwargs, fit_kwargs, error, expected", [
    ({"name": "../x"}, {}, TuneryError, r"(?s)plain directory name.*'\.\./x'|'\.\./x'.*plain directory name"),
    ({"name": ".hidden"}, {}, TuneryError, r"must be a plain directory name"),
    ({"name": "ok", "epoch": 1}, {}, TypeError, r"did you mean 'epochs'"),
    ({"name": "ok", "method": "nope"}, {}, TuneryError, r"method"),
    ({"name": "ok"}, {"text": "missing"}, TuneryError, r"data has no column 'missing' \(columns: review, label\)"),
    ({"name": "ok"}, {"validation": [1, 2]}, TuneryError, r"validation must be a pandas DataFrame or a file path"),
])
def test_fit_checks_its_arguments_before_writing_anything(tiny_backbone, tmp_path, kwargs, fit_kwargs, error,
                                                          expected):
    out = tmp_path / "out"
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=out / "runs", **kwargs)
    with pytest.raises(error, match=expected):
        clf.fit(make_dataset("binary", n=20), **({"text": "review", "label": "label"} | fit_kwargs))
    assert not out.exists(), _files(out)
    assert [p.name for p in tmp_path.iterdir()] == []  # not even beside output_dir (../x)


def test_fit_takes_back_its_data_copies_when_a_later_split_cannot_be_stored(tiny_backbone, tmp_path):
    test = make_dataset("binary", n=10)
    test["review"] = [{"nested": i} for i in range(10)]  # a struct column pyarrow cannot mix with str
    test.loc[0, "review"] = "text"
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=tmp_path / "out", name="ok")
    with pytest.raises(DataError, match=r"test: column 'review' mixes kinds of values"):
        clf.fit(make_dataset("binary", n=20), text="review", label="label", test=test)
    assert list(tmp_path.iterdir()) == []


def test_fit_with_mixed_int_and_str_labels_trains_as_the_csv_would(tiny_backbone, tmp_path):
    df = make_dataset("binary", n=60)
    df["label"] = [i % 2 if i % 3 else "other" for i in range(len(df))]  # 0, 1 and "other" in one column
    clf = tunery.TextClassifier(backbone=tiny_backbone, output_dir=tmp_path / "runs", name="mixed",
                                **fast_train(epochs=1))
    clf.fit(df, text="review", label="label")
    assert clf.classes_ == ["0", "1", "other"]
    assert len(clf.predict(["great the film"])) == 1


# -- a full disk while writing predictions ------------------------------------------------------------
def _big_input(path: Path, rows: int = 1500) -> Path:
    # random hex, so that even the gzipped predictions outgrow the small disk
    pd.DataFrame({"review": [f"great film {os.urandom(24).hex()}" for _ in range(rows)]}).to_csv(path, index=False)
    return path


def _assert_disk_full_handled(result, out: Path) -> None:
    assert result.exit_code != 0
    assert "No space left on device" in result.output and str(out) in result.output, result.output
    assert "Free space" in result.output
    assert "Traceback" not in result.output
    assert [p.name for p in out.parent.iterdir() if p.name != "filler"] == [], "a partial output was left behind"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KB tmpfs (root only); skipped where mounting is not permitted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "test_predict_on_an_injected_full_disk_leaves_nothing covers the same path")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("suffix, filler_kb", [("csv", 0), ("jsonl", 0), ("csv.gz", 0), ("csv", 50)])
def test_cli_predict_on_a_full_disk_leaves_nothing_behind(run_dir, tmp_path, small_tmpfs, suffix, filler_kb):
    """(On main: a raw OSError, and `.preds.csv.gz.partial` or, on a nearly full disk, `.preds.csv.partial`
    left behind: the writer's abort failed to flush before it could unlink.)"""
    if filler_kb:
        (small_tmpfs / "filler").write_bytes(b"x" * filler_kb * 1024)
    src = _big_input(tmp_path / "big.csv")
    out = small_tmpfs / f"preds.{suffix}"
    result = _cli("predict", str(run_dir), "-i", str(src), "-o", str(out), "--batch-rows", "500")
    _assert_disk_full_handled(result, out)


def test_predict_on_an_injected_full_disk_leaves_nothing(run_dir, tmp_path, monkeypatch):
    """The same as the tmpfs test where mounting is not allowed: the writer's file gets part of a
    chunk, then ENOSPC, and its flush on close fails again (as a real full disk does)."""
    from tunery.data import load as data_load

    real_write = data_load.TableWriter.write

    class _FullFile:
        """The open output file, whose final flush on close fails again."""

        def __init__(self, file):
            self.file = file

        def close(self):
            self.file.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk_write(self, df):
        real_write(self, df.head(1))
        self._file = _FullFile(self._file)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data_load.TableWriter, "write", full_disk_write)
    src = _big_input(tmp_path / "big.csv", rows=50)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "preds.csv"
    result = _cli("predict", str(run_dir), "-i", str(src), "-o", str(out))
    _assert_disk_full_handled(result, out)


def test_predict_file_failing_on_close_leaves_nothing(predictor, tmp_path, monkeypatch):
    from tunery.data import load as data_load

    def failing_close(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data_load.TableWriter, "close", failing_close)
    src = _big_input(tmp_path / "in.csv", rows=10)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DataError, match=r"could not write the predictions to .*preds\.csv: No space left"):
        predictor.predict_file(src, out_dir / "preds.csv")
    assert list(out_dir.iterdir()) == []


def test_a_failed_predict_keeps_an_older_output_untouched(predictor, tmp_path, monkeypatch):
    out = tmp_path / "preds.csv"
    out.write_text("earlier results\n")
    src = tmp_path / "in.csv"
    src.write_text("other\nx\n")
    with pytest.raises(DataError, match="no column 'review'"):
        predictor.predict_file(src, out)
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "preds.csv"]


def test_module_exports_the_input_error():
    from tunery.predict import PredictInputError

    assert issubclass(PredictInputError, TuneryError) and issubclass(PredictInputError, ValueError)


def test_predict_file_refuses_nested_texts_with_their_rows(predictor, tmp_path):
    src = tmp_path / "nested.jsonl"
    src.write_text('{"review": "fine"}\n{"review": ["a", "list"]}\n{"review": {"x": 1}}\n{"review": "ok"}\n')
    out = tmp_path / "preds.csv"
    with pytest.raises(tunery.errors.DataError, match=r"column 'review', row 2, 3: a list value, not a text"):
        predictor.predict_file(src, out)
    assert _files(tmp_path) == ["nested.jsonl"]

    src = tmp_path / "bytes.parquet"
    pd.DataFrame({"review": [b"horrible film", b"fine"]}).to_parquet(src)
    with pytest.raises(tunery.errors.DataError, match=r"row 1, 2: a bytes value"):
        predictor.predict_file(src, out)
    assert not out.exists()

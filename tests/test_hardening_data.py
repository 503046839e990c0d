"""Hostile and careless data files (issue 8, "Training and CLI"): each test fails on the code
before the fix. Data files that are not what they claim, nested values, many classes, huge texts."""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunery.config import DataConfig, TaskConfig
from tunery.data import encode_labels, iter_table, normalize_frame, prepare, read_table, write_table
from tunery.errors import DataError, TuneryError
from tunery.evaluate import classification_metrics, render_report
from tunery.evaluate.metrics import CONFUSION_MATRIX_MAX_CLASSES, TOP_CONFUSIONS

CSV = "text,label\n" + "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))


def _prepare(train, task="auto", tokenizer=None, **kw):
    return prepare(DataConfig(train=str(train), **kw), TaskConfig(type=task), tokenizer=tokenizer)


def _errors(report, code):
    return [f for f in report.errors if f.code == code]


# --- many classes: bounded metrics and report ---------------------------------------------------


def _many_class_scores(n_classes: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    P = rng.random((n, n_classes))
    P[np.arange(n), y] += 0.5 * (np.arange(n) % 3 == 0)  # a third right, the rest scattered
    return y, P / P.sum(axis=1, keepdims=True)


def test_metrics_for_3000_classes_stay_small():
    names = [f"class-{i}" for i in range(3000)]
    y, P = _many_class_scores(3000, 3000)
    m = classification_metrics(y, P, names)
    text = json.dumps(m, indent=2)
    # the full matrix alone was 9 million cells (hundreds of MB indented); per class figures stay
    assert len(text.encode()) < 1_500_000
    assert "confusion_matrix" not in m and len(m["per_class"]) == 3000
    top = m["top_confusions"]
    assert 0 < len(top) <= TOP_CONFUSIONS and set(top[0]) == {"true", "predicted", "count"}
    assert [t["count"] for t in top] == sorted((t["count"] for t in top), reverse=True)
    assert m["roc_auc"] is not None and 0 <= m["accuracy"] <= 1


def test_top_confusions_count_the_most_frequent_mistakes():
    names = [f"c{i}" for i in range(CONFUSION_MATRIX_MAX_CLASSES + 1)]
    y = np.array([0, 0, 0, 1, 1, 2, 3])
    pred = np.array([5, 5, 5, 2, 2, 2, 4])  # c0->c5 three times, c1->c2 twice, c3->c4 once
    P = np.full((len(y), len(names)), 0.1)
    P[np.arange(len(y)), pred] = 5.0
    m = classification_metrics(y, P / P.sum(axis=1, keepdims=True), names)
    assert m["top_confusions"] == [{"true": "c0", "predicted": "c5", "count": 3},
                                   {"true": "c1", "predicted": "c2", "count": 2},
                                   {"true": "c3", "predicted": "c4", "count": 1}]


def test_confusion_matrix_kept_up_to_the_bound():
    names = [f"c{i}" for i in range(CONFUSION_MATRIX_MAX_CLASSES)]
    y, P = _many_class_scores(len(names), 200)
    m = classification_metrics(y, P, names)
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (50, 50) and cm.sum() == 200 and "top_confusions" not in m


def test_multiclass_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 300)
    P = rng.random((300, 6)).round(1) + 0.01  # many ties
    P /= P.sum(axis=1, keepdims=True)
    m = classification_metrics(y, P, list("abcdef"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, P, multi_class="ovr"), abs=1e-12)


def test_report_with_many_classes_renders_bounded():
    names = [f"class-{i}" for i in range(300)]
    y, P = _many_class_scores(300, 900)
    m = classification_metrics(y, P, names)
    html = render_report(title="t", run_info={}, task="classification", label_names=names,
                         metrics={"test": m}, baseline={"test": m},
                         predictions={"test": ([f"text {i}" for i in range(len(y))], y, P)}, n_errors=5)
    assert "Most frequent confusions" in html and "confusion matrix, test" not in html
    assert "Showing the 50 of 300 labels" in html
    assert html.count("class-") < 50 * 3 + TOP_CONFUSIONS * 2 + 5 * 2 + 10
    assert len(html.encode()) < 400_000


# --- most classes cannot be learned ----------------------------------------------------------


def test_mostly_single_example_classes_is_an_error_with_the_numbers(tmp_path):
    path = tmp_path / "train.csv"
    rows = [(f"ticket about thing {i}", f"intent-{i}") for i in range(400)]  # 400 singletons
    rows += [(f"refund please {i}", "refund") for i in range(30)]
    write_table(pd.DataFrame(rows, columns=["text", "label"]), path)
    data, report = _prepare(path)
    assert data is None
    [f] = _errors(report, "too_few_examples")
    assert "400 of 401 classes" in f.message and "fewer than 2" in f.message
    assert "430 usable rows" in f.message and "'label'" in f.message and f.count == 400
    with pytest.raises(DataError, match="400 of 401 classes"):
        report.raise_for_errors()


def test_half_rare_classes_only_warn(tmp_path):
    path = tmp_path / "train.csv"
    rows = [(f"t {i}", f"c{i % 5}") for i in range(50)] + [(f"r {i}", f"rare{i}") for i in range(5)]
    write_table(pd.DataFrame(rows, columns=["text", "label"]), path)
    data, report = _prepare(path)
    assert data is not None and report.ok
    assert [f.severity for f in report.findings if f.code == "too_few_examples"] == ["warning"]


def test_multilabel_mostly_single_example_labels_is_an_error(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": f"t {i}", "tags": ["common", f"only{i}"]} for i in range(30)]
    write_table(pd.DataFrame(rows), path)
    data, report = _prepare(path)
    assert data is None and "30 of 31 labels" in _errors(report, "too_few_examples")[0].message


# --- one huge text ----------------------------------------------------------------------------


class _SpyTokenizer:
    """Counts whitespace words; records the longest input it was given."""

    def __init__(self):
        self.longest = 0

    def __call__(self, texts, pairs=None, truncation=False):
        self.longest = max(self.longest, *(len(t) for t in texts), *(len(p) for p in pairs or [""]))
        ids = [list(range(len(t.split()) + (len(p.split()) if pairs else 0)))
               for t, p in zip(texts, pairs or [""] * len(texts))]
        return {"input_ids": ids}


def test_truncation_check_reads_a_bounded_head_of_a_20_mb_text(tmp_path):
    path = tmp_path / "train.csv"
    huge = "word " * 4_000_000  # 20 MB
    rows = [(f"t {i}", "pos" if i % 2 else "neg") for i in range(20)]
    rows[3] = (huge, "pos")
    write_table(pd.DataFrame(rows, columns=["text", "label"]), path)
    spy = _SpyTokenizer()
    _, report = _prepare(path, tokenizer=spy, max_length=64)
    assert spy.longest <= 64 * 32  # never the 20 MB
    [f] = [f for f in report.findings if f.code == "truncation"]
    assert f.rows == (4,) and "at least" in f.message and "first 2,048 characters" in f.message


def test_truncation_check_bounds_pair_texts_too(tmp_path):
    path = tmp_path / "train.csv"
    rows = [(f"t {i}", f"p {i}", "pos" if i % 2 else "neg") for i in range(20)]
    rows[7] = ("short", "word " * 10_000, "pos")  # only the pair text is long
    write_table(pd.DataFrame(rows, columns=["sentence1", "sentence2", "label"]), path)
    spy = _SpyTokenizer()
    data, report = _prepare(path, tokenizer=spy, max_length=64)
    assert data is not None and spy.longest <= 64 * 32
    [f] = [f for f in report.findings if f.code == "truncation"]
    assert f.rows == (8,) and "at least" in f.message


def test_truncation_exact_for_short_texts(tmp_path):
    path = tmp_path / "train.csv"
    rows = [(f"t {i}", "pos" if i % 2 else "neg") for i in range(20)]
    rows[5] = ("w " * 40, "neg")
    write_table(pd.DataFrame(rows, columns=["text", "label"]), path)
    _, report = _prepare(path, tokenizer=_SpyTokenizer(), max_length=16)
    [f] = [f for f in report.findings if f.code == "truncation"]
    assert f.rows == (6,) and "the longest has 40 tokens" in f.message


# --- text encodings ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, shown", [("utf-16", "UTF-16LE"), ("utf-16-le", "UTF-16LE"),
                                             ("utf-16-be", "UTF-16BE"), ("utf-32", "UTF-32LE"),
                                             ("utf-32-be", "UTF-32BE")])
def test_utf16_and_utf32_files_are_named_not_utf8(tmp_path, encoding, shown):
    path = tmp_path / "train.csv"
    path.write_bytes(CSV.encode(encoding))
    for read in (read_table, lambda p: list(iter_table(p))):
        with pytest.raises(DataError, match="not UTF-8") as err:
            read(path)
        assert shown in str(err.value) and "iconv -f" in str(err.value) and "t UTF-8" in str(err.value)
    _, report = _prepare(path)
    [f] = report.errors
    assert "not UTF-8" in f.message and "missing labels" not in f.message


def test_utf16_inside_gzip_is_detected(tmp_path):
    path = tmp_path / "train.tsv.gz"
    path.write_bytes(gzip.compress(CSV.replace(",", "\t").encode("utf-16")))
    with pytest.raises(DataError, match=r"not UTF-8.*UTF-16.*gzip -dc"):
        read_table(path)


def test_utf8_with_bom_and_accents_still_reads(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\ncafé crème,pos\n日本語,neg\n".encode("utf-8-sig"))
    assert read_table(path)["text"].tolist() == ["café crème", "日本語"]


# --- files that are not regular files ------------------------------------------------------------


@pytest.mark.timeout(30)
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    for read in (read_table, lambda p: next(iter_table(p))):
        with pytest.raises(DataError, match="FIFO.*not a regular file"):
            read(fifo)
    _, report = _prepare(fifo)
    assert "FIFO" in report.errors[0].message


def test_symlink_loop_is_not_file_not_found(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(DataError, match="symbolic link loop") as err:
        read_table(a)
    assert "not found" not in str(err.value)


def test_dangling_symlink_names_its_target(tmp_path):
    link = tmp_path / "d.csv"
    link.symlink_to(tmp_path / "gone.csv")
    with pytest.raises(DataError, match="symbolic link to .*gone.csv.*does not exist"):
        read_table(link)


def test_permission_denied_names_the_directory(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    path = locked / "train.csv"
    path.write_text(CSV)
    real_stat, real_access = os.stat, os.access

    def stat(p, *a, **kw):  # what a non-root user meets under a chmod 000 directory
        if str(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_stat(p, *a, **kw)

    def access(p, mode, *a, **kw):
        return False if str(p) == str(locked) else real_access(p, mode, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "access", access)
    with pytest.raises(DataError, match=f"permission denied: the directory {locked} "):
        read_table(path)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the check as the nobody user")
def test_permission_denied_as_a_real_unprivileged_user():
    base = Path(tempfile.mkdtemp(prefix="tunery-perm-"))  # /tmp: reachable by nobody
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir()
        (locked / "train.csv").write_text(CSV)
        locked.chmod(0o000)
        code = ("import sys\nfrom tunery.data import read_table\nfrom tunery.errors import DataError\n"
                "try:\n    read_table(sys.argv[1])\nexcept DataError as e:\n    print(e)\n    sys.exit(3)\n")
        src = str(Path(__file__).resolve().parents[1] / "src")
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-c", code, str(locked / "train.csv")],
                              capture_output=True, text=True, timeout=120, cwd=base,
                              env={**os.environ, "PYTHONPATH": src, "HOME": str(base)})
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert f"permission denied: the directory {locked} " in proc.stdout
    finally:
        (base / "locked").chmod(0o755)
        shutil.rmtree(base)


# --- compressed files that are not, or are cut short -------------------------------------------

_COMPRESS = {"gz": (gzip.compress, "gzip"), "bz2": (bz2.compress, "bzip2"), "xz": (lzma.compress, "xz")}
BIG = "text,label\n" + "".join(f"row {i} {np.random.default_rng(i).integers(1e9)},{i % 2}\n"
                               for i in range(30_000))


@pytest.mark.parametrize("ext", list(_COMPRESS))
def test_plain_file_named_compressed_says_so(tmp_path, ext):
    path = tmp_path / f"notcompressed.csv.{ext}"
    path.write_text(CSV)
    name = _COMPRESS[ext][1]
    for read in (read_table, lambda p: list(iter_table(p))):
        with pytest.raises(DataError, match=f"not a {name} file.*rename it to notcompressed.csv"):
            read(path)


@pytest.mark.parametrize("ext", list(_COMPRESS))
def test_truncated_compressed_file_is_a_clear_error(tmp_path, ext):
    compress, name = _COMPRESS[ext]
    data = compress(BIG.encode())
    path = tmp_path / f"cut.csv.{ext}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=f"cut.csv.{ext}: the {name} data is truncated"):
        read_table(path)
    chunks = iter_table(path, batch_rows=1000)
    # bzip2 decodes whole 900 kB blocks: a cut in the only block shows before the first row
    where = "" if ext == "bz2" else " after row [1-9]"
    with pytest.raises(DataError, match=f"the {name} data is truncated{where}") as err:
        for _ in chunks:
            pass
    assert isinstance(err.value, TuneryError)  # the CLI's guard prints it; not click's "Aborted."


@pytest.mark.parametrize("ext", list(_COMPRESS))
def test_corrupt_compressed_file_is_a_clear_error(tmp_path, ext):
    compress, name = _COMPRESS[ext]
    data = bytearray(compress(BIG.encode()))
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    path = tmp_path / f"bad.csv.{ext}"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"the {name} data is corrupt"):
        read_table(path)
    # streamed, damaged data may first surface as a malformed row, before the checksum
    with pytest.raises(DataError, match=f"the {name} data is corrupt|malformed row"):
        list(iter_table(path, batch_rows=1000))


def test_empty_gz_file(tmp_path):
    path = tmp_path / "e.jsonl.gz"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="not a gzip file: it is empty"):
        next(iter_table(path))


def test_streamed_good_gz_still_reads_every_row(tmp_path):
    path = tmp_path / "ok.csv.gz"
    path.write_bytes(gzip.compress(BIG.encode()))
    assert sum(len(c) for c in iter_table(path, batch_rows=7000)) == 30_000


def test_parquet_that_is_not_parquet_streams_to_a_clear_error(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text(CSV)
    with pytest.raises(DataError, match="cannot read as Parquet"):
        next(iter_table(path))


# --- nested values ------------------------------------------------------------------------------


def _labels(n=20):
    return ["pos" if i % 2 else "neg" for i in range(n)]


@pytest.mark.parametrize("values, kind", [
    ([f"horrible film {i}".encode() for i in range(20)], "bytes"),
    ([{"title": f"horrible {i}", "body": "y"} for i in range(20)], "dicts"),
    ([["horrible", f"film {i}"] for i in range(20)], "lists")])
def test_nested_texts_in_parquet_are_errors_with_rows(tmp_path, values, kind):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": values, "label": _labels()}).to_parquet(path)
    data, report = _prepare(path, drop_invalid_rows=True)
    [f] = _errors(report, "nested_value")
    assert data is None and kind in f.message and "'text'" in f.message and "rows 1, 2, 3" in f.message
    assert f.rows == tuple(range(1, 21)) and "horrible" in f.message  # the first value, shown


def test_nested_values_in_jsonl_are_errors(tmp_path):
    recs = [{"text": f"t {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    recs[4]["text"] = {"nested": "object"}
    recs[9]["label"] = {"k": "v"}
    recs[11]["label"] = [["a"], ["b"]]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    data, report = _prepare(path)
    found = {f.message.split("'")[1]: f for f in _errors(report, "nested_value")}
    assert data is None and set(found) == {"text", "label"}
    assert found["text"].rows == (5,)
    assert found["label"].rows == (10, 12) and "lists" in found["label"].message


def test_list_of_lists_and_map_labels_are_rejected_for_multilabel(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    tags = pa.array([[("a", 1)], [("b", 2)]] * 10, type=pa.map_(pa.string(), pa.int64()))
    pq.write_table(pa.table({"text": [f"t {i}" for i in range(20)], "tags": tags}), path)
    data, report = _prepare(path)
    assert data is None and _errors(report, "nested_value")[0].rows[:2] == (1, 2)


def test_multilabel_lists_of_strings_stay_valid(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": [f"t {i}" for i in range(40)],
                  "tags": [["a", "b"] if i % 2 else ["b"] for i in range(40)]}).to_parquet(path)
    data, report = _prepare(path)
    assert report.ok and data.task == "multilabel" and data.label_names == ["a", "b"]


def test_encode_labels_never_reads_a_nested_label_as_its_repr():
    enc = encode_labels(pd.Series(["a", {"x": 1}, "b"], dtype=object), "classification", ["a", "b"])
    assert enc.bad.tolist() == [False, True, False] and pd.isna(enc.encoded[1])
    assert enc.unseen_values == []


def test_classification_with_list_labels_points_to_multilabel(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t {i}", "label": ["a"] if i == 3 else "ab"[i % 2]})
                              for i in range(20)))
    _, report = _prepare(path, task="classification")
    [f] = _errors(report, "nested_value")
    assert f.rows == (4,) and "task.type: multilabel" in f.message


# --- mixed types in a DataFrame ---------------------------------------------------------------


def test_mixed_int_and_str_labels_store_as_a_csv_would_read_them(tmp_path):
    labels = [1, "pos", 2] * 10
    df = pd.DataFrame({"text": [f"t {i}" for i in range(30)], "label": labels})
    write_table(df, tmp_path / "d.parquet")  # ArrowInvalid before
    df.to_csv(tmp_path / "d.csv", index=False)
    as_csv = read_table(tmp_path / "d.csv")["label"].tolist()
    assert read_table(tmp_path / "d.parquet")["label"].tolist() == as_csv == ["1", "pos", "2"] * 10
    a, _ = _prepare(tmp_path / "d.parquet")
    b, _ = _prepare(tmp_path / "d.csv")
    assert a.label_names == b.label_names == ["1", "2", "pos"]


def test_normalize_frame_keeps_clean_columns_and_missing_values():
    df = pd.DataFrame({"text": ["a", "b", "c"], "n": [1, 2, 3], "m": [None, 5, "x"]})
    out = normalize_frame(df)
    assert pd.isna(out["m"][0]) and out["m"].tolist()[1:] == ["5", "x"] and out["n"].tolist() == [1, 2, 3]
    clean = pd.DataFrame({"text": ["a"], "tags": [["x", "y"]]})
    assert normalize_frame(clean) is clean


def test_column_mixing_lists_and_strings_is_a_clear_error(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c"], "tags": [["x"], "y", ["z"]]})
    with pytest.raises(DataError, match=r"column 'tags' mixes .*lists at rows 1, 3.*strings at rows 2"):
        write_table(df, tmp_path / "d.parquet")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_baseline_caps_features_by_the_number_of_classes(monkeypatch):
    from tunery.evaluate import baseline

    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 5000, 12)) for _ in range(300)]
    y = np.arange(300) % 100
    monkeypatch.setattr(baseline, "_WEIGHT_BUDGET", 100 * 1_500)  # 1,500 n-grams per class and view
    model = baseline.TfidfModel.fit("classification", texts, y, n_labels=100)
    # uncapped, these texts give about 16,000 word and char n-grams
    assert model.scores(texts[:5]).shape == (5, 100) and model.n_features <= 2 * 1_500

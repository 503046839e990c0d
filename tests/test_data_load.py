import bz2
import gzip
import json
import lzma
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tunery.data import TableWriter, iter_table, read_table, write_table
from tunery.errors import DataError

SST2 = Path("/work/shared/data/sst2/train.tsv")
FRAME = pd.DataFrame({"text": ["good film", "NA", "null", "bad"], "label": ["pos", "neg", "neg", "neg"]})


def _csv(tmp_path, text, name="d.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.csv.gz", "d.tsv.bz2",
                                  "d.jsonl.xz"])
def test_every_format_round_trips(tmp_path, name):
    write_table(FRAME, tmp_path / name)
    df = read_table(tmp_path / name)
    assert df["text"].tolist() == FRAME["text"].tolist()
    assert df["label"].tolist() == FRAME["label"].tolist()


def test_text_na_and_null_stay_strings_only_empty_is_missing(tmp_path):
    df = read_table(_csv(tmp_path, "text,label\nNA,1\nnull,0\n,1\n"))
    assert df["text"].iloc[0] == "NA" and df["text"].iloc[1] == "null"
    assert pd.isna(df["text"].iloc[2])


def test_tab_extension_and_stray_quotes_read_as_plain_characters(tmp_path):
    p = _csv(tmp_path, 'sentence\tlabel\n" a quote opens here\t1\nnext line\t0\nthird "x\t1\n', "d.tab")
    df = read_table(p)
    assert len(df) == 3
    assert df["sentence"].iloc[0] == '" a quote opens here'


def test_json_list_of_records(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}]))
    assert read_table(p)["label"].tolist() == [1, 0]


def test_zip_with_one_csv(tmp_path):
    p = tmp_path / "d.csv.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("inner.csv", "text,label\na,1\nb,0\n")
    assert len(read_table(p)) == 2


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_unknown_extension_lists_supported(tmp_path):
    p = _csv(tmp_path, "x", "d.xlsx")
    with pytest.raises(DataError, match=r"d\.xlsx.*unsupported.*\.csv, \.tsv"):
        read_table(p)


def test_malformed_csv_row_is_named(tmp_path):
    p = _csv(tmp_path, "text,label\na,1\nb,0\nc,1,extra\n")
    with pytest.raises(DataError, match=r"d\.csv: malformed row at row 3 \(line 4\)"):
        read_table(p)


def test_malformed_jsonl_row_is_named(tmp_path):
    p = _csv(tmp_path, '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', "d.jsonl")
    with pytest.raises(DataError, match=r"d\.jsonl: malformed row 2 \(line 2\)"):
        read_table(p)


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_no_data_rows(tmp_path, content):
    with pytest.raises(DataError, match="d.csv"):
        read_table(_csv(tmp_path, content))


def test_undecodable_bytes_are_replaced_and_rows_recorded(tmp_path):
    raw = "text,label\nfine,1\n".encode() + b"caf\xe9 latin1,0\nok,1\n" + b"bad \xff\xfe,1\n"
    df = read_table(_csv(tmp_path, raw))
    assert df.attrs["undecodable_rows"] == [2, 4]
    assert df["text"].iloc[1] == "caf\ufffd latin1"


def test_undecodable_rows_in_jsonl(tmp_path):
    raw = b'{"text": "a", "label": 1}\n{"text": "b\xe9", "label": 0}\n'
    df = read_table(_csv(tmp_path, raw, "d.jsonl"))
    assert df.attrs["undecodable_rows"] == [2]


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.parquet", "d.tsv.gz"])
def test_iter_table_streams_in_chunks(tmp_path, name):
    big = pd.DataFrame({"text": [f"t{i}" for i in range(2500)], "label": [i % 3 for i in range(2500)]})
    write_table(big, tmp_path / name)
    chunks = list(iter_table(tmp_path / name, batch_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert chunks[2].index[0] == 2000  # index + 1 is the row number
    assert pd.concat(chunks)["text"].tolist() == big["text"].tolist()


def test_iter_table_reports_undecodable_rows_per_chunk(tmp_path):
    raw = b"text,label\n" + b"".join(b"t\xe9,1\n" if i == 7 else b"t,1\n" for i in range(10))
    chunks = list(iter_table(_csv(tmp_path, raw), batch_rows=4))
    assert [c.attrs["undecodable_rows"] for c in chunks] == [[], [8], []]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_table_writer_appends_chunks(tmp_path, name):
    with TableWriter(tmp_path / name) as w:
        w.write(FRAME.iloc[:2])
        w.write(FRAME.iloc[2:])
    assert read_table(tmp_path / name)["text"].tolist() == FRAME["text"].tolist()


def test_table_writer_leaves_no_file_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with TableWriter(tmp_path / "out.csv") as w:
            w.write(FRAME)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not SST2.exists(), reason="shared SST-2 data not present")
def test_sst2_train_tsv_reads_fully():
    df = read_table(SST2)
    assert len(df) == 67_349
    assert list(df.columns) == ["sentence", "label"]

"""Read and write labelled tables: csv, tsv, jsonl (or a .json list), parquet; gz/bz2/xz/zip variants.

Row numbering everywhere in tunery: "row N" is the 1-based number of the data record (the first record
after the header is row 1; in JSONL the first non-blank line is row 1), so `df.index + 1` is the row.

Cell values are kept as read: the text "NA" or "null" stays a string; only truly empty cells (and
JSON null) are missing. Bytes that are not valid UTF-8 never raise here: they are decoded with
U+FFFD and their row numbers are returned in `df.attrs["undecodable_rows"]` for validation to report.
"""

from __future__ import annotations

import logging

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from tunery.errors import DataError

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip")
_COMPRESSIBLE = ("csv", "tsv", "jsonl")
SUPPORTED = (
    ".csv, .tsv, .tab, .jsonl, .ndjson, .json (a list of records), .parquet, .pq; "
    "csv/tsv/jsonl may be compressed as .gz, .bz2, .xz or .zip"
)

# Undecodable bytes are first replaced by this noncharacter (never in real text) so that the rows
# holding them can be found after parsing; it is then swapped for U+FFFD.
_MARK = "\U0010fffe"
_ERRORS = "tunery-mark-undecodable"
_seen = [0]  # how many undecodable byte runs the decoder met (a cheap "any?" test per chunk)


def _mark_handler(err: UnicodeDecodeError) -> tuple[str, int]:
    _seen[0] += 1
    return _MARK, err.end


codecs.register_error(_ERRORS, _mark_handler)
_NA = {"keep_default_na": False, "na_values": [""]}


def detect_format(path: str | Path) -> tuple[str, str | None]:
    """(format, compression) from the file name, e.g. "train.csv.gz" -> ("csv", "gz")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = suffixes.pop()[1:]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compression and fmt not in _COMPRESSIBLE):
        raise DataError(
            f"{path}: unsupported file type {''.join(Path(path).suffixes) or '(no extension)'!r}; "
            f"supported: {SUPPORTED}. Rename the file or convert it to one of these"
        )
    return fmt, compression


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (relative paths are resolved "
                        f"against the config file's directory)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file; give the file inside it")


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zip":
        zf = zipfile.ZipFile(path)
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise DataError(f"{path}: a .zip must hold exactly one data file, found {len(names)}")
        return zf.open(names[0])
    return open(path, "rb")


def _read_text(path: Path, compression: str | None) -> str:
    try:
        with _open_binary(path, compression) as f:
            raw = f.read()
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"{path}: cannot read the {compression or ''} file ({err}); "
                        f"check that it is not truncated or corrupted") from None
    return raw.decode("utf-8-sig", errors=_ERRORS)


def _open_text(path: Path, compression: str | None) -> IO[str]:
    return io.TextIOWrapper(_open_binary(path, compression), encoding="utf-8-sig",
                            errors=_ERRORS, newline="")


def _mark_undecodable(df: pd.DataFrame, first_row: int = 1) -> list[int]:
    """Swap the marker for U+FFFD in place; return the row numbers that held it."""
    hit = pd.Series(False, index=df.index)
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
            has = s.str.contains(_MARK, regex=False, na=False).astype(bool)
        elif s.dtype == object:
            has = s.map(lambda v: isinstance(v, str) and _MARK in v).astype(bool)
        else:
            continue
        if has.any():
            df[col] = s.where(~has, s.str.replace(_MARK, "\ufffd", regex=False))
            hit |= has
    df.columns = [str(c).replace(_MARK, "\ufffd") for c in df.columns]
    return [first_row + int(i) for i in np.flatnonzero(hit.to_numpy())]


_LINE_RE = re.compile(r"line (\d+)")


def _parse_error(path: Path, err: Exception, header_lines: int = 1) -> DataError:
    msg = str(err).strip()
    m = _LINE_RE.search(msg)
    where = ""
    if m:
        line = int(m.group(1))
        where = f" at row {line - header_lines} (line {line})"
    fix = ("check that row for an extra delimiter or an unclosed quote; quote fields that contain "
           "the delimiter")
    return DataError(f"{path}: malformed row{where}: {msg}; {fix}")


def _delimited(fmt: str) -> dict[str, Any]:
    return {"sep": "\t" if fmt == "tsv" else ",", **_NA}


def _one_record_per_line(text: str) -> bool:
    """True when every non-blank line has as many tabs as the header: the file is plain TSV."""
    lines = [line for line in text.split("\n") if line.strip()]
    return bool(lines) and all(line.count("\t") == lines[0].count("\t") for line in lines)


def _read_delimited(path: Path, fmt: str, text: str) -> pd.DataFrame:
    opts = _delimited(fmt)
    try:
        df = pd.read_csv(io.StringIO(text), **opts)
        err = None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row")
    except (pd.errors.ParserError, ValueError) as e:
        df, err = None, e
    if fmt == "tsv" and '"' in text and _one_record_per_line(text):
        # GLUE-style TSVs are not quoted: a stray '"' would swallow following lines or fail.
        # When every line holds exactly one record, quotes are plain characters.
        plain = pd.read_csv(io.StringIO(text), quoting=csv.QUOTE_NONE, **opts)
        if df is None or len(df) != len(plain):
            return plain
    if df is None:
        raise _parse_error(path, err)
    return df


def _jsonl_records(lines: Iterator[str], path: Path, first_line: int = 1):
    """Yield (line_number, record) for non-blank lines; malformed lines raise with their row."""
    row = 0
    for lineno, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        row += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: malformed row {row} (line {lineno}): not valid JSON ({err.msg} "
                            f"at column {err.colno}); each line must be one JSON object") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: malformed row {row} (line {lineno}): expected a JSON object "
                            f"like {{\"text\": ..., \"label\": ...}}, got {type(rec).__name__}")
        yield rec


def _read_json_list(path: Path, text: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                        f"a .json file must hold a list of records, or use .jsonl") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), data)
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of records [{{...}}, ...]; "
                        f"use .jsonl for one record per line")
    for i, rec in enumerate(data, start=1):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: malformed row {i}: expected a JSON object, got {type(rec).__name__}")
    return pd.DataFrame.from_records(data)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole table. `df.index + 1` is the row number; see the module docstring."""
    path = Path(path)
    fmt, compression = detect_format(path)
    _check_exists(path)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for a bad file
            raise DataError(f"{path}: cannot read as Parquet ({err}); check that the file is a "
                            f"complete Parquet file") from None
        undecodable: list[int] = []
    else:
        text = _read_text(path, compression)
        if fmt in ("csv", "tsv"):
            df = _read_delimited(path, fmt, text)
        elif fmt == "jsonl":
            df = pd.DataFrame.from_records(list(_jsonl_records(iter(text.split("\n")), path)))
        else:
            df = _read_json_list(path, text)
        undecodable = _mark_undecodable(df) if _MARK in text else []
    if len(df) == 0:
        raise DataError(f"{path}: no data rows; the file needs at least one record"
                        + (" after the header row" if fmt in ("csv", "tsv") else ""))
    df = df.reset_index(drop=True)
    df.attrs["undecodable_rows"] = undecodable
    return df


def iter_table(path: str | Path, batch_rows: int = 10_000) -> Iterator[pd.DataFrame]:
    """Stream a table in chunks of at most `batch_rows` rows without loading the whole file.

    Each chunk keeps the source row numbers as `index + 1` (a continuing index) and carries
    `attrs["undecodable_rows"]`. TSVs are streamed with standard quoting.
    """
    path = Path(path)
    fmt, compression = detect_format(path)
    _check_exists(path)
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        start = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            df = batch.to_pandas()
            df.index = pd.RangeIndex(start, start + len(df))
            start += len(df)
            df.attrs["undecodable_rows"] = []
            yield df
        return
    if fmt == "json":  # a single JSON document cannot be streamed
        df = read_table(path)
        for start in range(0, len(df), batch_rows):
            yield df.iloc[start:start + batch_rows]
        return
    seen = _seen[0]
    with _open_text(path, compression) as f:
        if fmt == "jsonl":
            chunks = _iter_jsonl(f, path, batch_rows)
        else:
            try:
                # all columns as text: per-chunk type guessing would change types between
                # chunks and turn pass-through ids such as 00123 into 123
                chunks = pd.read_csv(f, chunksize=batch_rows, dtype=str,
                                     **_delimited(fmt))
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file is empty; it needs a header row and data rows")
        start, dirty, columns = 0, False, None
        while True:
            try:
                df = next(chunks)
            except StopIteration:
                break
            except (pd.errors.ParserError, ValueError) as err:
                raise _parse_error(path, err) from None
            if columns is None:
                columns = list(df.columns)
            elif list(df.columns) != columns:  # JSONL records may omit keys or order them freely
                extra = [c for c in df.columns if c not in columns]
                if extra:
                    log.warning("%s: keys %s first appear after row %d; they are not carried to the output",
                                path, extra[:5], start)
                df = df.reindex(columns=columns)
            df.index = pd.RangeIndex(start, start + len(df))
            # the decoder reads ahead, so once it met a bad byte every later chunk is scanned
            dirty = dirty or _seen[0] != seen
            df.attrs["undecodable_rows"] = _mark_undecodable(df, first_row=start + 1) if dirty else []
            start += len(df)
            yield df


def _iter_jsonl(f: IO[str], path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    batch: list[dict] = []
    for rec in _jsonl_records(f, path):
        batch.append(rec)
        if len(batch) == batch_rows:
            yield pd.DataFrame.from_records(batch)
            batch = []
    if batch:
        yield pd.DataFrame.from_records(batch)


def _output_format(path: Path) -> tuple[str, str | None]:
    fmt, compression = detect_format(path)
    if fmt == "json":
        raise DataError(f"{path}: write predictions as .jsonl (one record per line), not .json")
    if compression == "zip":
        raise DataError(f"{path}: .zip output is not supported; use .gz, .bz2 or .xz")
    return fmt, compression


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a whole table by suffix (csv, tsv, jsonl, parquet; .gz/.bz2/.xz for text formats)."""
    with TableWriter(path) as writer:
        writer.write(df)


class TableWriter:
    """Append chunks to one output table; the file appears only when the writer closes cleanly.

    >>> with TableWriter("preds.csv") as w:
    ...     for chunk in chunks:
    ...         w.write(chunk)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.format, self.compression = _output_format(self.path)
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._file: IO[str] | None = None
        self._parquet = None
        self._rows = 0
        self._columns: list[str] | None = None

    def _open(self, df: pd.DataFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.Schema.from_pandas(df, preserve_index=False)
            self._parquet = pq.ParquetWriter(self._tmp, schema)
            return
        opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(self.compression or "", open)
        self._file = opener(self._tmp, "wt", encoding="utf-8", newline="")

    def write(self, df: pd.DataFrame) -> None:
        if self._columns is None:
            self._columns = [str(c) for c in df.columns]
            self._open(df)
        elif [str(c) for c in df.columns] != self._columns:
            raise ValueError(f"chunk columns {list(df.columns)} differ from the first chunk's "
                             f"{self._columns}")
        if self._parquet is not None:
            import pyarrow as pa

            table = pa.Table.from_pandas(df, preserve_index=False)
            self._parquet.write_table(table.cast(self._parquet.schema))
        elif self.format == "jsonl":
            if len(df):
                text = df.to_json(orient="records", lines=True, force_ascii=False)
                self._file.write(text if text.endswith("\n") else text + "\n")
        else:
            df.to_csv(self._file, index=False, header=self._rows == 0,
                      sep="\t" if self.format == "tsv" else ",", lineterminator="\n")
        self._rows += len(df)

    def close(self) -> None:
        if self._columns is None:  # nothing written: still produce a valid empty file
            self._columns = []
            self._open(pd.DataFrame())
        if self._parquet is not None:
            self._parquet.close()
        if self._file is not None:
            self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        for h in (self._parquet, self._file):
            if h is not None:
                h.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

"""Read and write labelled tables: csv, tsv, jsonl (or a .json list), parquet; gz/bz2/xz/zip variants.

Row numbering everywhere in tunery: "row N" is the 1-based number of the data record (the first record
after the header is row 1; in JSONL the first non-blank line is row 1), so `df.index + 1` is the row.

Cell values are kept as read: the text "NA" or "null" stays a string; only truly empty cells (and
JSON null) are missing. Bytes that are not valid UTF-8 never raise here: they are decoded with
U+FFFD and their row numbers are returned in `df.attrs["undecodable_rows"]` for validation to report.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import errno
import gzip
import io
import json
import logging
import lzma
import os
import re
import stat
import zipfile
import zlib
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
    """The path names a readable regular file; else a DataError that says why (never hangs)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise _os_error(path, err) from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, not a data file; give the file inside it")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        raise DataError(f"{path}: is {kind}, not a regular file; tunery reads data only from regular files "
                        f"(it may read a file twice): write the data to a file and give that file")
    try:  # a regular file: opening cannot block
        with open(path, "rb"):
            pass
    except OSError as err:
        raise _os_error(path, err) from None


def _os_error(path: Path, err: OSError) -> DataError:
    """An OSError met while opening `path` as a DataError naming the cause and the fix."""
    code = err.errno
    if code == errno.ENOENT:
        if os.path.islink(path):
            return DataError(f"{path}: is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                             f"fix the link or give the data file itself")
        return DataError(f"{path}: file not found; check the path (relative paths are resolved "
                         f"against the config file's directory)")
    if code == errno.ELOOP:
        return DataError(f"{path}: symbolic link loop (too many levels of symbolic links: a link points, "
                         f"directly or through others, back to itself); fix the link to point at the data "
                         f"file, or give the file's real path")
    if code in (errno.EACCES, errno.EPERM):
        where = _denied_at(path)
        return DataError(f"{path}: permission denied: {where} is not readable by this user; fix the "
                         f"permissions (e.g. `chmod`) or copy the file somewhere readable")
    if code == errno.ENOTDIR:
        return DataError(f"{path}: a part of this path is a file, not a directory; check the path")
    return DataError(f"{path}: cannot open the file ({err.strerror or err}); check the path and the file")


def _denied_at(path: Path) -> str:
    """Which part of `path` this user may not enter or read: a directory above it, or the file."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        if not os.access(parent, os.X_OK):
            return f"the directory {parent} (no search permission)"
    return "the file"


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


# compression: (signature at the start of the file, name, the command that tests a file)
_SIGNATURES = {"gz": (b"\x1f\x8b", "gzip", "gzip -t"), "bz2": (b"BZh", "bzip2", "bzip2 -t"),
               "xz": (b"\xfd7zXZ\x00", "xz", "xz -t"), "zip": (b"PK", "zip", "unzip -t")}
_DECOMPRESS_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)
SNIFF_BYTES = 4096  # bytes read (after decompression) to recognise a wide text encoding
# byte-order marks, the UTF-32 ones first (the UTF-32-LE mark begins with the UTF-16-LE one);
# the iconv name reads the mark itself and picks the byte order
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32LE", "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32BE", "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16LE", "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16BE", "UTF-16"))


def _check_signature(path: Path, compression: str | None) -> None:
    """A file named .gz/.bz2/.xz/.zip must start with that format's signature."""
    if compression is None:
        return
    magic, name, _ = _SIGNATURES[compression]
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head == magic:
        return
    plain = path.with_name(path.name[: -len(compression) - 1])
    seen = "it is empty (0 bytes)" if not head else f"it starts with {head!r}, not the {name} signature {magic!r}"
    raise DataError(f"{path}: not a {name} file: {seen}; if it holds plain text, drop the "
                    f".{compression} suffix (rename it to {plain.name}), else compress it again with {name}")


def _decompress_error(path: Path, compression: str | None, err: BaseException, where: str = "") -> DataError:
    """A read error inside a (compressed) file as a DataError: truncated, corrupt or unreadable."""
    if isinstance(err, DataError):
        return err
    if compression is None:
        if isinstance(err, OSError):
            return DataError(f"{path}: cannot read the file{where} ({err.strerror or err}); check the disk "
                             f"and the file")
        return DataError(f"{path}: cannot read the file{where} ({err})")
    _, name, test = _SIGNATURES[compression]
    if isinstance(err, EOFError) or "ended before the end-of-stream" in str(err):
        return DataError(f"{path}: the {name} data is truncated{where}: the file ends before the end of the "
                         f"compressed stream (an interrupted download or copy?); copy the complete file "
                         f"again (`{test} {path}` checks a file)")
    return DataError(f"{path}: the {name} data is corrupt{where} ({err}); copy the file again "
                     f"(`{test} {path}` checks a file)")


def _wide_encoding(head: bytes) -> tuple[str, str, str] | None:
    """(encoding, iconv name, how it was seen) when `head` is UTF-16 or UTF-32 text, else None.

    A byte-order mark decides; without one, text in these encodings shows NUL bytes at fixed
    positions (ASCII "ab" is 61 00 62 00 in UTF-16-LE), which UTF-8 text never has.
    """
    for bom, name, iconv in _BOMS:
        if head.startswith(bom):
            return name, iconv, "its byte-order mark"
    n = len(head) // 4 * 4
    if n < 4 or b"\x00" not in head[:n]:
        return None
    z = (np.frombuffer(head[:n], dtype=np.uint8).reshape(-1, 4) == 0).mean(axis=0)  # NUL share per byte slot
    how = "the NUL bytes between its characters"
    if z[3] > 0.9 and z[2] > 0.5 and z[0] < 0.5:
        return "UTF-32LE", "UTF-32LE", how
    if z[0] > 0.9 and z[1] > 0.5 and z[3] < 0.5:
        return "UTF-32BE", "UTF-32BE", how
    if min(z[1], z[3]) > 0.5 and max(z[0], z[2]) < 0.5:
        return "UTF-16LE", "UTF-16LE", how
    if min(z[0], z[2]) > 0.5 and max(z[1], z[3]) < 0.5:
        return "UTF-16BE", "UTF-16BE", how
    return None


def _check_encoding(path: Path, compression: str | None, head: bytes) -> None:
    found = _wide_encoding(head)
    if found is None:
        return
    name, iconv, how = found
    plain = Path(path.name[: -len(compression) - 1] if compression else path.name)
    out = plain.with_suffix(".utf8" + plain.suffix).name  # d.csv.gz -> d.utf8.csv
    if compression is None:
        cmd = f"iconv -f {iconv} -t UTF-8 {path} > {out}"
    else:
        unpack = {"gz": "gzip -dc", "bz2": "bzip2 -dc", "xz": "xz -dc", "zip": "unzip -p"}[compression]
        cmd = f"{unpack} {path} | iconv -f {iconv} -t UTF-8 > {out}"
    raise DataError(f"{path}: not UTF-8: the text is encoded as {name} (seen from {how}); tunery reads "
                    f"UTF-8. Convert it, e.g. `{cmd}`, or re-save it as UTF-8 (in Excel: \"CSV UTF-8\")")


def _sniff(path: Path, compression: str | None) -> None:
    """Before streaming: the compression signature, the first decompressed bytes, the encoding."""
    _check_signature(path, compression)
    try:
        with _open_binary(path, compression) as f:
            head = f.read(SNIFF_BYTES)
    except _DECOMPRESS_ERRORS as err:
        raise _decompress_error(path, compression, err) from None
    _check_encoding(path, compression, head)


def _read_text(path: Path, compression: str | None) -> str:
    _check_signature(path, compression)
    try:
        with _open_binary(path, compression) as f:
            raw = f.read()
    except _DECOMPRESS_ERRORS as err:
        raise _decompress_error(path, compression, err) from None
    _check_encoding(path, compression, raw[:SNIFF_BYTES])
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
    `attrs["undecodable_rows"]`. TSVs are streamed with standard quoting. A file that is not what
    its name says (not gzip, not UTF-8) fails before the first chunk; one that breaks later
    (truncated, corrupt) fails with a DataError naming the last good row.
    """
    path = Path(path)
    fmt, compression = detect_format(path)
    _check_exists(path)
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    if fmt == "parquet":
        yield from _iter_parquet(path, batch_rows)
        return
    if fmt == "json":  # a single JSON document cannot be streamed
        df = read_table(path)
        for start in range(0, len(df), batch_rows):
            yield df.iloc[start:start + batch_rows]
        return
    _sniff(path, compression)
    seen = _seen[0]
    start = 0

    def failed(err: BaseException) -> DataError:
        return _decompress_error(path, compression, err, f" after row {start}" if start else "")

    try:
        f = _open_text(path, compression)
    except _DECOMPRESS_ERRORS as err:
        raise failed(err) from None
    with f:
        if fmt == "jsonl":
            chunks = _iter_jsonl(f, path, batch_rows)
        else:
            try:
                # all columns as text: per-chunk type guessing would change types between
                # chunks and turn pass-through ids such as 00123 into 123
                chunks = pd.read_csv(f, chunksize=batch_rows, dtype=str,
                                     **_delimited(fmt))
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file is empty; it needs a header row and data rows") from None
            except pd.errors.ParserError as err:
                raise _parse_error(path, err) from None
            except _DECOMPRESS_ERRORS as err:
                raise failed(err) from None
        dirty, columns = False, None
        while True:
            try:
                df = next(chunks)
            except StopIteration:
                break
            except pd.errors.ParserError as err:
                raise _parse_error(path, err) from None
            except _DECOMPRESS_ERRORS as err:
                # the decompressor's errors: EOFError (truncated), OSError, zlib/lzma errors; a
                # ValueError here is pandas' own (a malformed row) unless it names the stream end
                if type(err) is ValueError and "end-of-stream" not in str(err):
                    raise _parse_error(path, err) from None
                raise failed(err) from None
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


def _iter_parquet(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    except Exception as err:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: cannot read as Parquet ({err}); check that the file is a "
                        f"complete Parquet file") from None
    start = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - a damaged row group
            raise DataError(f"{path}: cannot read as Parquet after row {start} ({err}); check that the "
                            f"file is a complete Parquet file") from None
        df = batch.to_pandas()
        df.index = pd.RangeIndex(start, start + len(df))
        start += len(df)
        df.attrs["undecodable_rows"] = []
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


def value_kind(v: Any) -> str | None:
    """What an object cell holds, for messages: None for missing; "text", "number", "list", ..."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        return "text"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(v, dict):
        return "dict"
    if isinstance(v, (list, tuple, np.ndarray, set, frozenset)):
        return "list"
    if isinstance(v, (bool, int, float, np.bool_, np.number)):
        return "number"
    return type(v).__name__


def normalize_frame(df: pd.DataFrame, source: str = "DataFrame") -> pd.DataFrame:
    """`df` made storable as Parquet the way a CSV of it would read back.

    pandas keeps a column of mixed Python values (labels 1, "pos", 2) as objects; Arrow refuses
    them (ArrowInvalid/ArrowTypeError). Such a column of plain values is turned into text (str(v)), as
    writing a CSV and reading it back would ("1", "pos", "2"); missing values stay missing. A
    column mixing lists or dicts with single values cannot be stored: DataError naming the column,
    the kinds and their rows (row N is position N, counting from 1). Columns Arrow takes as they
    are, and column names, are kept (names become strings). Returns a copy only when needed.
    """
    import pyarrow as pa

    out = df
    if any(not isinstance(c, str) for c in df.columns):
        out = df.rename(columns=str)
    for col in out.columns:
        values = out[col]
        if values.dtype != object:
            continue
        try:
            pa.array(values, from_pandas=True)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            arrow_error = err
        kinds = values.map(value_kind)
        present = [k for k in pd.unique(kinds.dropna())]
        if not set(present) & {"list", "dict", "bytes"}:  # plain values: as a CSV would hold them
            fixed = values.map(lambda v: v if isinstance(v, str) or value_kind(v) is None else str(v))
            if out is df:
                out = df.copy()
            out[col] = fixed.astype(object)
            continue
        where = {k: np.flatnonzero((kinds == k).to_numpy()) + 1 for k in present}
        shown = "; ".join(f"{_KIND_WORDS.get(k, k)} at rows {', '.join(map(str, rows[:5]))}"
                          + (" ..." if len(rows) > 5 else "") for k, rows in where.items())
        raise DataError(f"{source}: column {col!r} mixes kinds of values that cannot be stored together "
                        f"({shown}); give every row of this column the same kind, e.g. a list of labels "
                        f"in every row of a multi-label column, or plain strings (Arrow: {arrow_error})")
    return out


_KIND_WORDS = {"text": "strings", "number": "numbers", "list": "lists", "dict": "dicts (structs/maps)",
               "bytes": "bytes"}


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
        if self.format == "parquet":  # mixed-type object columns as text, as a CSV would hold them
            df = normalize_frame(df, str(self.path))
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
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._file is not None:
                self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove the temporary file, whatever closing it says: on a full disk the close's final
        flush fails again, and that must not keep the partial file on the disk."""
        for h in (self._parquet, self._file):
            if h is not None:
                try:
                    h.close()
                except Exception:  # noqa: BLE001 - the file is being thrown away
                    pass
        self._parquet = self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

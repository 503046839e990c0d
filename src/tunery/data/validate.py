"""Check a labelled dataset before training and turn it into train/validation/test frames.

`prepare(cfg.data, cfg.task)` reads the files, infers columns and task, runs every check and, if
nothing is an error, splits. Each problem is a `Finding` whose message names the file, the count,
the first row numbers and the fix. Row N is the 1-based data record (see `tunery.data.load`).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunery.config import DataConfig, TaskConfig
from tunery.data.load import read_table, value_kind
from tunery.data.split import split_frame
from tunery.errors import DataError

TaskName = Literal["classification", "multilabel", "regression"]

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "comment", "document", "ticket",
              "note", "message", "question", "utterance", "tweet", "post", "query", "title",
              "description", "abstract", "sentence1", "text_a", "premise", "question1")
# a text column's usual partner: (text, pair)
PAIRS = (("sentence1", "sentence2"), ("text_a", "text_b"), ("premise", "hypothesis"),
         ("question1", "question2"), ("text", "text_pair"), ("text1", "text2"))
LABEL_NAMES = ("label", "labels", "target", "targets", "class", "category", "categories",
               "sentiment", "stars", "score", "rating", "y", "tag", "tags", "intent", "topic",
               "emotion", "gold_label")
ID_NAMES = ("id", "idx", "index", "guid", "uid", "uuid", "row", "row_id", "key")
DELIMITERS = ("|", ";", ",")
MAX_CLASSES_FOR_NUMBERS = 20  # more distinct numeric labels than this means regression
MAX_ROWS = 1000  # rows kept per Finding
SHOWN_ROWS = 10  # rows named in a message
# A class with fewer training examples than this cannot be both learned and checked: a split puts
# its single example on one side only. Validation fails when more than half the classes are such.
MIN_CLASS_EXAMPLES = 2
# Truncation is judged on each text's first max_length x this many characters: no tokenizer's
# tokens average that many characters, so a longer text is over the limit whatever follows, and a
# 50 MB text costs what a 16 k-character one does.
TRUNCATION_CHARS_PER_TOKEN = 32


# ---------------------------------------------------------------------------------------------
# report objects


@dataclass(frozen=True)
class Finding:
    """One problem found in the data.

    `count` is the number of affected rows, except: conflicting_labels counts texts (groups),
    imbalance gives the smallest class size, too_few_examples counts classes (or usable rows).
    """

    severity: Literal["error", "warning"]
    code: str
    message: str
    file: str | None
    rows: tuple[int, ...]
    count: int
    details: dict | None = None  # machine-readable figures (the vocabulary finding's shares)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = list(self.rows)
        return d


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(
            {"ok": self.ok, "findings": [f.to_dict() for f in self.findings], "summary": self.summary},
            default=_jsonable,
        ))

    def raise_for_errors(self) -> None:
        errors = self.errors
        if errors:
            head = f"{len(errors)} data error{'s' if len(errors) > 1 else ''}:"
            raise DataError("\n".join([head, *(f"- {f.message}" for f in errors)]))


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, tuple, set)):
        return list(o)
    return str(o)


@dataclass
class PreparedData:
    task: TaskName
    label_names: list[str]
    text_column: str
    text_pair_column: str | None
    label_column: str
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    split_note: str
    label_delimiter: str | None = None  # multi-label strings such as "a|b": given or inferred


@dataclass
class LabelEncoding:
    """`encode_labels` result. Masks are aligned with the input; `encoded` is None where invalid.

    classification -> int index; multilabel -> sorted list[int]; regression -> float.
    """

    encoded: pd.Series
    missing: pd.Series  # empty cell / null
    bad: pd.Series  # cannot be read for the task ("abc" in regression; a list, dict or bytes anywhere)
    unseen: pd.Series  # a label not in label_names
    unseen_values: list[str]  # those labels, most frequent first

    @property
    def valid(self) -> pd.Series:
        return ~(self.missing | self.bad | self.unseen)


# ---------------------------------------------------------------------------------------------
# small helpers


@dataclass(frozen=True)
class Source:
    """What a data file stands for in messages, when it is tunery's copy of the user's data: a
    DataFrame given to `TextClassifier.fit` is named as such, and its rows by their index labels."""

    name: str  # e.g. "the DataFrame given to fit (train)"
    index: list | None = None  # the DataFrame's index labels, by position (row N is index[N - 1])


_SOURCES: ContextVar[dict[str, Source]] = ContextVar("tunery_data_sources", default={})


@contextlib.contextmanager
def data_sources(sources: dict[str, Source]):
    """Within this block, messages about the files named in `sources` name what they stand for."""
    token = _SOURCES.set({**_SOURCES.get(), **{str(k): v for k, v in sources.items()}})
    try:
        yield
    finally:
        _SOURCES.reset(token)


def _where(path: str | None) -> str:
    """A file as messages name it: its path, or what it stands for (see `Source`)."""
    src = _SOURCES.get().get(str(path)) if path is not None else None
    return src.name if src else str(path)


def _rows_text(rows: list[int] | np.ndarray | tuple, path: str | None = None) -> str:
    rows = list(rows)
    src = _SOURCES.get().get(str(path)) if path is not None else None
    word = "row"
    if src is not None and src.index is not None:
        index = src.index
        rows = [index[r - 1] if 0 < r <= len(index) else r for r in rows]
        word = "index label"
    shown = ", ".join(str(r) for r in rows[:SHOWN_ROWS])
    more = f", ... ({len(rows) - SHOWN_ROWS} more)" if len(rows) > SHOWN_ROWS else ""
    return f"{word}{'s' if len(rows) > 1 else ''} {shown}{more}"


def _finding(severity, code, message, file, rows=(), count=None, details=None) -> Finding:
    rows = tuple(int(r) for r in list(rows)[:MAX_ROWS])
    return Finding(severity, code, message, file, rows, int(len(rows) if count is None else count), details)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _did_you_mean(name: str, options: list[str]) -> str:
    lower = {o.lower(): o for o in options}
    match = lower.get(name.lower())
    if match is None:
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        close = close or difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
        match = lower.get(close[0], close[0]) if close else None
    return f" (did you mean {match!r}?)" if match else ""


def _is_listlike(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _label_name(v: Any) -> str | None:
    """A single label as its name: 1, 1.0 and "1" are all "1"; None when missing."""
    if _is_missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else str(float(v))
    return str(v).strip()


def _sort_names(names) -> list[str]:
    names = list(names)
    try:
        return sorted(names, key=lambda n: (float(n), n))
    except ValueError:
        return sorted(names)


def _label_items(v: Any, delimiter: str | None) -> list[str] | None:
    """A multi-label cell as its label names; None when missing. [] is a valid "no labels"."""
    if _is_listlike(v):
        return [n for n in (_label_name(x) for x in v) if n is not None]
    if _is_missing(v):
        return None
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                parsed = json.loads(s)
                if isinstance(parsed, list):
                    return [n for n in (_label_name(x) for x in parsed) if n is not None]
            except json.JSONDecodeError:
                pass
        parts = s.split(delimiter) if delimiter else [s]
        return [p.strip() for p in parts if p.strip()]
    return [_label_name(v)]


def _to_float(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)):
        return None
    try:
        x = float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


_KIND_WORDS = {"list": "lists", "dict": "dicts (structs or maps)", "bytes": "bytes",
               "nested list": "lists of lists (or maps)"}


def _nested_kinds(values: pd.Series, task: TaskName | None = None) -> pd.Series:
    """Per cell, the kind of a nested value ("list", "dict", "bytes", "nested list") where the
    column needs plain values, else None. Texts (task None) and single labels must be plain;
    a multi-label cell may be a list of plain labels."""
    values = values.reset_index(drop=True)
    if values.dtype != object:
        return pd.Series(None, index=values.index, dtype=object)

    def kind(v: Any) -> str | None:
        k = value_kind(v)
        if k not in ("list", "dict", "bytes"):
            return None
        if k == "list" and task == "multilabel":
            inner = {value_kind(x) for x in v}
            return "nested list" if inner & {"list", "dict", "bytes"} else None
        return k

    return values.map(kind).astype(object)


def _nested_message(path: str, column: str, values: pd.Series, kinds: pd.Series, rows: np.ndarray,
                    what: str, fix: str) -> tuple[str, np.ndarray]:
    bad = kinds.notna().to_numpy()
    counts = kinds[bad].value_counts()
    desc = ", ".join(f"{_KIND_WORDS[k]} ({_plural(int(c), 'row')})" for k, c in counts.items())
    first = repr(values.reset_index(drop=True)[bad].iloc[0])
    first = first if len(first) <= 60 else first[:57] + "..."
    rows = rows[bad]
    return (f"{_where(path)}: column {column!r} holds {desc} instead of {what}, at {_rows_text(rows, path)} (first: "
            f"{first}); {fix}"), rows


def _missing_mask(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return values.isna()
    if pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        return values.isna() | (values.str.strip() == "")
    return values.map(_is_missing).astype(bool)


def _text_series(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(texts as str with "" for missing, empty mask)."""
    missing = _missing_mask(values)
    text = values.where(~missing, "")
    if not (pd.api.types.is_string_dtype(text.dtype) and text.dtype != object):
        text = text.map(lambda v: v if isinstance(v, str) else str(v))
    return text.astype(object), missing


# ---------------------------------------------------------------------------------------------
# inference


def infer_columns(df: pd.DataFrame, cfg: DataConfig, *, source: str | None = None
                  ) -> tuple[str, str | None, str]:
    """(text column, pair column or None, label column), honouring cfg overrides."""
    src = source or cfg.train
    cols = [str(c) for c in df.columns]
    lower: dict[str, str] = {}
    for c in cols:
        lower.setdefault(c.lower(), c)

    def explicit(name: str | None, what: str, key: str) -> str | None:
        if name is not None and name not in cols:
            raise DataError(f"{_where(src)}: {what} column {name!r} (data.{key}) not found{_did_you_mean(name, cols)}; "
                            f"available columns: {', '.join(cols)}")
        return name

    text = explicit(cfg.text_column, "text", "text_column")
    pair = explicit(cfg.text_pair_column, "text pair", "text_pair_column")
    label = explicit(cfg.label_column, "label", "label_column")
    taken = {c for c in (text, pair, label) if c}

    if text is None:
        text = next((lower[n] for n in TEXT_NAMES if n in lower and lower[n] not in taken), None)
    if text is None:
        text = _longest_text_column(df, [c for c in cols if c not in taken])
    if text is None:
        raise DataError(f"{_where(src)}: no text column found among {', '.join(cols)}; "
                        f"set data.text_column to the column holding the text")
    taken.add(text)
    if pair is None and cfg.text_pair_column is None:
        partner = dict(PAIRS).get(text.lower())
        if partner and partner in lower and lower[partner] not in taken:
            pair = lower[partner]
            taken.add(pair)
    if label is None:
        label = next((lower[n] for n in LABEL_NAMES if n in lower and lower[n] not in taken), None)
    if label is None:
        rest = [c for c in cols if c not in taken]
        not_ids = [c for c in rest if c.lower() not in ID_NAMES]
        label = (not_ids or rest or [None])[-1]
    if label is None:
        raise DataError(f"{_where(src)}: no label column found (columns: {', '.join(cols)}); "
                        f"add a label column or set data.label_column")
    return text, pair, label


def _longest_text_column(df: pd.DataFrame, candidates: list[str]) -> str | None:
    best, best_len = None, 0.0
    head = df.head(1000)
    for c in candidates:
        s = head[c].dropna()
        s = s[s.map(lambda v: isinstance(v, str))]
        if len(s) < max(1, len(head[c].dropna()) // 2):
            continue
        mean = float(s.str.len().mean())
        if mean > best_len:
            best, best_len = c, mean
    return best


def detect_delimiter(labels: pd.Series) -> str | None:
    """The delimiter of multi-label strings like "a|b", or None if the labels are not delimited."""
    s = labels[~_missing_mask(labels)]
    s = s[s.map(lambda v: isinstance(v, str))].astype(str).str.strip()
    if s.empty:
        return None
    whole = s.nunique()
    for d in DELIMITERS:
        has = s.str.contains(d, regex=False)
        share = float(has.mean())
        if share == 0:
            continue
        parts = s.str.split(d).explode().str.strip()
        n_parts = parts[parts != ""].nunique()
        # a small label vocabulary that combines, or a | or ; in most rows
        if (n_parts < whole and share >= 0.02) or (d != "," and share >= 0.5):
            return d
    return None


def infer_task(labels: pd.Series, cfg_task: TaskConfig | str, delimiter: str | None) -> TaskName:
    """The task for these training labels; `cfg_task` wins unless it is "auto"."""
    kind = getattr(cfg_task, "type", cfg_task)
    if kind != "auto":
        return kind
    values = labels[~_missing_mask(labels)]
    if values.empty:
        return "classification"
    if values.dtype == object and values.map(_is_listlike).any():
        return "multilabel"
    if pd.api.types.is_bool_dtype(values.dtype):
        return "classification"
    if not pd.api.types.is_numeric_dtype(values.dtype):
        strings = values[values.map(lambda v: isinstance(v, str))].astype(str)
        if delimiter and strings.str.contains(delimiter, regex=False).any():
            return "multilabel"
        if delimiter is None and detect_delimiter(values) is not None:
            return "multilabel"
        numbers = values.map(_to_float)
        if float(numbers.notna().mean()) < 0.9:
            return "classification"
        numbers = numbers.dropna().astype(float)
    else:
        numbers = values.astype(float)
    if not (numbers % 1 == 0).all() or numbers.nunique() > MAX_CLASSES_FOR_NUMBERS:
        return "regression"
    return "classification"


def label_names_for(labels: pd.Series, task: TaskName, delimiter: str | None = None) -> list[str]:
    """Sorted label names seen in `labels` ([] for regression); numeric names sort by value."""
    if task == "regression":
        return []
    if task == "multilabel":
        items = labels.map(lambda v: _label_items(v, delimiter)).dropna()
        return _sort_names({n for lst in items for n in lst})
    return _sort_names({n for n in labels.map(_label_name).dropna()})


def encode_labels(values: pd.Series, task: TaskName, label_names: list[str], *,
                  delimiter: str | None = None) -> LabelEncoding:
    """Encode raw label cells for `task` against `label_names`; report what cannot be encoded."""
    values = values.reset_index(drop=True)
    none = pd.Series(False, index=values.index)
    nested = _nested_kinds(values, task).notna().astype(bool)  # never read as their repr
    if nested.any():
        values = values.where(~nested, None)
    if task == "regression":
        missing = _missing_mask(values) & ~nested
        floats = values.map(_to_float)
        bad = ~missing & floats.isna()
        encoded = floats.astype(object).where(~(missing | bad), None)
        return LabelEncoding(encoded, missing, bad, none, [])
    index = {n: i for i, n in enumerate(label_names)}
    if task == "multilabel":
        items = values.map(lambda v: _label_items(v, delimiter))
        missing = items.isna()
        unseen_names = items.map(lambda lst: [n for n in lst if n not in index] if lst is not None else [])
        unseen = unseen_names.map(bool).astype(bool)
        encoded = items.map(lambda lst: sorted({index[n] for n in lst if n in index})
                            if lst is not None else None)
        flat = pd.Series([n for lst in unseen_names for n in lst], dtype=object)
    else:
        names = values.map(_label_name)
        missing = names.isna()
        codes = names.map(index)
        unseen = ~missing & codes.isna()
        encoded = codes.astype(object).where(~(missing | unseen), None)
        encoded = encoded.map(lambda v: None if v is None else int(v))
        flat = names[unseen]
    encoded = encoded.where(~unseen, None)
    unseen_values = [str(v) for v in flat.value_counts().index] if len(flat) else []
    missing = missing.astype(bool) & ~nested
    return LabelEncoding(encoded, missing, nested, unseen, unseen_values)


# ---------------------------------------------------------------------------------------------
# prepare


def _token_lengths(tokenizer, texts: list[str], pairs: list[str] | None, batch: int = 10_000
                   ) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch):
        t = texts[start:start + batch]
        p = pairs[start:start + batch] if pairs is not None else None
        ids = tokenizer(t, p, truncation=False)["input_ids"] if p is not None else \
            tokenizer(t, truncation=False)["input_ids"]
        out.append(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class _Checker:
    """Runs the checks of one `prepare` call and collects findings."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.findings: list[Finding] = []

    def add(self, *args, **kwargs) -> None:
        self.findings.append(_finding(*args, **kwargs))

    def invalid(self, code: str, mask: pd.Series, rows: np.ndarray, path: str, what: str,
                fix: str) -> bool:
        """An empty text / missing label check; returns whether the rows are to be dropped."""
        if not mask.any():
            return False
        bad = rows[mask.to_numpy()]
        drop = self.cfg.drop_invalid_rows
        if drop:
            msg = f"{_where(path)}: dropped {_plural(len(bad), 'row')} with {what} at {_rows_text(bad, path)}"
        else:
            msg = (f"{_where(path)}: {len(bad)} {what} at {_rows_text(bad, path)}; {fix} "
                   f"(or set data.drop_invalid_rows: true)")
        self.add("warning" if drop else "error", code, msg, path, bad, len(bad))
        return drop


def _check_nested_text(ck: _Checker, path: str, values: pd.Series, column: str, rows: np.ndarray) -> pd.Series:
    """Texts that are lists, structs or bytes (Parquet, JSONL) are errors, never their repr."""
    kinds = _nested_kinds(values)
    mask = kinds.notna().astype(bool)
    if mask.any():
        msg, bad = _nested_message(
            path, column, values, kinds, rows, "text",
            "texts must be strings: convert the column before saving (decode bytes as UTF-8, join a "
            "list's items, take one field of a struct) or set data.text_column to a column of strings")
        ck.add("error", "nested_value", msg, path, bad, len(bad))
    return mask


def _label_key(labels: pd.Series, task: TaskName) -> pd.Series:
    if task == "multilabel":
        return labels.map(lambda v: ",".join(map(str, v)))
    return labels.map(repr)


def _check_file(ck: _Checker, role: str, path: str, df: pd.DataFrame, text_col: str,
                pair_col: str | None, label_col: str, task: TaskName, names: list[str],
                delimiter: str | None, train_present: set[int] | None) -> pd.DataFrame:
    """Per-file checks; returns the usable rows as text/text_pair/label/row/source."""
    cfg = ck.cfg
    rows = np.arange(1, len(df) + 1)
    text, empty = _text_series(df[text_col].reset_index(drop=True))
    drop = pd.Series(False, index=text.index)
    if ck.invalid("empty_text", empty, rows, path, f"empty or missing texts in column {text_col!r}",
                  "fill or remove them"):
        drop |= empty
    invalid = empty.copy()
    invalid |= _check_nested_text(ck, path, df[text_col], text_col, rows)
    pair = None
    if pair_col is not None:
        pair, pair_empty = _text_series(df[pair_col].reset_index(drop=True))
        if ck.invalid("empty_text", pair_empty, rows, path,
                      f"empty or missing texts in column {pair_col!r}", "fill or remove them"):
            drop |= pair_empty
        invalid |= pair_empty
        invalid |= _check_nested_text(ck, path, df[pair_col], pair_col, rows)

    enc = encode_labels(df[label_col], task, names, delimiter=delimiter)
    if ck.invalid("missing_label", enc.missing, rows, path,
                  f"missing labels in column {label_col!r}", "label or remove those rows"):
        drop |= enc.missing
    invalid |= enc.missing
    nested = _nested_kinds(df[label_col], task)
    if nested.notna().any():
        if task == "multilabel":
            what, fix = ("labels", "a multi-label cell must be a list of plain labels such as "
                         "[\"sports\", \"tech\"] (or a delimited string \"sports|tech\"): flatten these")
        else:
            what = "a single label"
            fix = "a label must be a string or a number: convert the column before saving"
            if "list" in set(nested.dropna()):
                fix += "; lists of labels are multi-label: set task.type: multilabel"
        msg, bad = _nested_message(path, label_col, df[label_col], nested, rows, what, fix)
        ck.add("error", "nested_value", msg, path, bad, len(bad))
    number_bad = enc.bad & nested.isna().to_numpy()
    if number_bad.any():
        bad = rows[number_bad.to_numpy()]
        examples = ", ".join(repr(v) for v in pd.unique(df[label_col].reset_index(drop=True)[number_bad])[:5])
        ck.add("error", "bad_label",
               f"{_where(path)}: {_plural(len(bad), 'label')} in column {label_col!r} are not numbers as a "
               f"regression target needs ({examples}) at {_rows_text(bad, path)}; fix them, or set "
               f"task.type: classification if these are classes", path, bad, len(bad))
    invalid |= enc.bad

    unseen = enc.unseen.copy()
    labels = enc.encoded
    if train_present is not None and task != "regression":
        ok = enc.valid
        absent = labels.map(lambda v: v is not None and (
            v not in train_present if task == "classification" else any(i not in train_present for i in v)))
        absent = absent.astype(bool) & ok
        unseen |= absent
        extra = [names[i] for i in sorted({i for v in labels[absent]
                                           for i in ([v] if task == "classification" else v)}
                                          - train_present)]
        unseen_values = enc.unseen_values + extra
    else:
        unseen_values = enc.unseen_values
    if unseen.any():
        bad = rows[unseen.to_numpy()]
        listed = ", ".join(repr(v) for v in unseen_values[:10])
        if role == "train":  # only possible when data.labels fixes the label set
            hint = _did_you_mean(unseen_values[0], names)
            key = _label_set_key(cfg)
            what = "have no name in data.label_names" if key == "data.label_names" else "are not in data.labels"
            add = "give them a name in" if key == "data.label_names" else "add them to"
            ck.add("error", "bad_label",
                   f"{_where(path)}: {_plural(len(bad), 'row')} {'has' if len(bad) == 1 else 'have'} label values "
                   f"that {what} ({listed}) at {_rows_text(bad, path)}; labels must be one of "
                   f"{{{', '.join(names)}}}{hint}: fix them or {add} {key}",
                   path, bad, len(bad))
        else:
            ck.add("error", "unseen_label",
                   f"{_where(path)}: {_plural(len(bad), 'row')} {'has' if len(bad) == 1 else 'have'} labels "
                   f"never seen in training ({listed}) at {_rows_text(bad, path)}; add training examples "
                   f"of them to {_where(cfg.train)} or remove these rows", path, bad, len(bad))
    invalid |= unseen

    keep = ~invalid  # dropped rows (drop_invalid_rows) are among the invalid ones
    out = pd.DataFrame({"text": text[keep].str.strip()})
    if pair is not None:
        out["text_pair"] = pair[keep].str.strip()
    lab = labels[keep]
    if task == "classification":
        lab = lab.astype("int64")
    elif task == "regression":
        lab = lab.astype("float64")
    out["label"] = lab
    out["row"] = rows[keep.to_numpy()]
    out["source"] = path
    return out.reset_index(drop=True)


def _text_key(frame: pd.DataFrame) -> pd.Series:
    key = frame["text"]
    if "text_pair" in frame:
        key = key + "\x1f" + frame["text_pair"]
    return key


def _check_duplicates(ck: _Checker, path: str, frame: pd.DataFrame, task: TaskName,
                      names: list[str]) -> None:
    if frame.empty:
        return
    keys = pd.DataFrame({"k": _text_key(frame), "l": _label_key(frame["label"], task)})
    dup = keys.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = frame["row"].to_numpy()[dup]
        ck.add("warning", "duplicate",
               f"{_where(path)}: {_plural(len(rows), 'row')} repeat an earlier row's text and label exactly, at "
               f"{_rows_text(rows, path)}; remove the copies (copies can land in both training and evaluation "
               f"splits and inflate scores)", path, rows, len(rows))
    distinct = keys.drop_duplicates()
    n_labels = distinct.groupby("k", sort=False)["l"].size()
    conflicting = n_labels[n_labels > 1].index
    if len(conflicting):
        mask = keys["k"].isin(conflicting).to_numpy()
        sub = frame.loc[mask, ["row", "label"]].assign(k=keys["k"][mask].to_numpy())
        groups = sub.groupby("k", sort=False)
        shown = []
        for _, g in list(groups)[:5]:
            labs = pd.unique(g["label"].map(lambda v: _label_str(v, task, names)))
            shown.append(f"{_rows_text(g['row'].tolist(), path)} ({' vs '.join(labs)})")
        more = f"; ... ({len(conflicting) - 5} more texts)" if len(conflicting) > 5 else ""
        ck.add("warning", "conflicting_labels",
               f"{_where(path)}: {_plural(len(conflicting), 'text')} appear with different labels: "
               f"{'; '.join(shown)}{more}; fix the labels or remove the contradicting rows",
               path, sorted(sub["row"].tolist()), len(conflicting))


def _label_str(v: Any, task: TaskName, names: list[str]) -> str:
    if task == "classification":
        return names[v]
    if task == "multilabel":
        return "[" + ", ".join(names[i] for i in v) + "]"
    return str(v)


def _check_overlap(ck: _Checker, train_path: str, train: pd.DataFrame, path: str, role: str,
                   frame: pd.DataFrame) -> None:
    if frame.empty or train.empty:
        return
    tk, ek = _text_key(train), _text_key(frame)
    in_train = ek.isin(tk).to_numpy()
    if not in_train.any():
        return
    rows = frame["row"].to_numpy()[in_train]
    train_rows = train["row"].to_numpy()[tk.isin(ek).to_numpy()]
    ck.add("warning", "overlap",
           f"{_where(path)}: {_plural(len(rows), 'text')} also appear in {_where(train_path)} (leakage), at "
           f"{_rows_text(rows, path)} (in {_where(train_path)}: {_rows_text(train_rows, train_path)}); {role} "
           f"scores will be too optimistic: remove them from one of the files", path, rows, len(rows))


def _class_counts(frame: pd.DataFrame, task: TaskName, names: list[str]) -> dict[str, int]:
    if task == "classification":
        counts = frame["label"].value_counts()
    else:
        counts = frame["label"].explode().dropna().astype("int64").value_counts()
    return {n: int(counts.get(i, 0)) for i, n in enumerate(names)}


def _first_label(frame: pd.DataFrame, task: TaskName) -> pd.Series | None:
    if task == "classification":
        return frame["label"]
    if task == "multilabel":
        return frame["label"].map(lambda v: v[0] if len(v) else -1)
    return None


def _read(ck: _Checker, report: ValidationReport, role: str, path: str) -> pd.DataFrame | None:
    """Read one file into the report: None (and an error finding) when it cannot be read."""
    try:
        df = read_table(path)
    except DataError as err:
        ck.add("error", "unreadable", str(err), path)
        return None
    report.summary["files"][path] = {"role": role, "rows": len(df), "columns": [str(c) for c in df.columns]}
    und = df.attrs.get("undecodable_rows") or []
    if und:
        ck.add("error", "undecodable",
               f"{_where(path)}: {_plural(len(und), 'row')} hold bytes that are not valid UTF-8, at "
               f"{_rows_text(und, path)} (shown as '\ufffd'); save the file as UTF-8 (e.g. "
               f"`iconv -f latin1 -t utf-8`) or fix those rows", path, und, len(und))
    return df


def _label_set_key(cfg: DataConfig) -> str:
    """The setting that fixes the label set, for messages."""
    return "data.labels" if cfg.labels or cfg.label_names is None else "data.label_names"


def prepare(cfg: DataConfig, task: TaskConfig, *, tokenizer=None, backbone: str | None = None,
            federated: bool = False) -> tuple[PreparedData | None, ValidationReport]:
    """Read, check and split the data of `cfg`. Returns (None, report) when there are errors.

    `federated`: the file is one client's share of a federation, whose other clients hold the
    other classes: a client with one class, or with mostly rare ones, is normal under a non-IID
    split, so those findings are warnings there.

    Never writes anything. With a tokenizer, texts longer than cfg.max_length tokens are reported,
    and the tokenizer's vocabulary coverage is measured (judged against the languages of
    `backbone`, when the catalog lists them).
    """
    ck = _Checker(cfg)
    report = ValidationReport(ck.findings, {"files": {}})
    files = {"train": cfg.train, "validation": cfg.validation, "test": cfg.test}
    frames: dict[str, pd.DataFrame] = {}
    for role, path in files.items():
        if path is None:
            continue
        df = _read(ck, report, role, path)
        if df is not None:
            frames[role] = df
    if "train" not in frames:
        return None, report

    try:
        text_col, pair_col, label_col = infer_columns(frames["train"], cfg, source=cfg.train)
    except DataError as err:
        ck.add("error", "missing_column", str(err), cfg.train)
        return None, report
    for role in ("validation", "test"):
        if role in frames:
            cols = [str(c) for c in frames[role].columns]
            lost = [c for c in (text_col, pair_col, label_col) if c is not None and c not in cols]
            if lost:
                ck.add("error", "missing_column",
                       f"{_where(files[role])}: column{'s' if len(lost) > 1 else ''} {', '.join(map(repr, lost))} "
                       f"(found in {_where(cfg.train)}) missing{_did_you_mean(lost[0], cols)}; available "
                       f"columns: {', '.join(cols)}; rename the column to match", files[role])
                del frames[role]
    report.summary["columns"] = {"text": text_col, "text_pair": pair_col, "label": label_col}

    train_labels = frames["train"][label_col]
    delimiter = cfg.label_delimiter
    task_name = infer_task(train_labels, task, delimiter)
    if task_name == "multilabel" and delimiter is None:
        delimiter = detect_delimiter(train_labels)
    inferred = getattr(task, "type", task) == "auto"
    if cfg.labels and task_name != "regression":
        raw_names = list(cfg.labels)
    elif cfg.label_names is not None and task_name == "classification":
        raw_names = _sort_names(cfg.label_names)  # the named values are the label set
    else:
        raw_names = label_names_for(train_labels, task_name, delimiter)
    names = raw_names
    if cfg.label_names is not None:
        if task_name == "classification":
            names = [cfg.label_names.get(n, n) for n in raw_names]
        else:
            how = f"inferred from {_where(cfg.train)}" if inferred else "task.type"
            ck.add("error", "label_names",
                   f"data.label_names: names apply to the values of a classification label, but this task is "
                   f"{task_name} ({how}); remove data.label_names"
                   + (", or set task.type: classification if the labels are classes" if inferred else ""),
                   cfg.train)
    report.summary.update(task=task_name, task_inferred=inferred, label_names=names, label_delimiter=delimiter)

    clean: dict[str, pd.DataFrame] = {}
    clean["train"] = _check_file(ck, "train", cfg.train, frames["train"], text_col, pair_col,
                                 label_col, task_name, raw_names, delimiter, None)
    train = clean["train"]
    present_idx = None
    if task_name != "regression":
        counts = _class_counts(train, task_name, names)
        present_idx = {i for i, n in enumerate(names) if counts[n] > 0}
    for role in ("validation", "test"):
        if role in frames:
            clean[role] = _check_file(ck, role, files[role], frames[role], text_col, pair_col,
                                      label_col, task_name, raw_names, delimiter, present_idx)
    for role, frame in clean.items():
        _check_duplicates(ck, files[role], frame, task_name, names)
        if role != "train":
            _check_overlap(ck, cfg.train, train, files[role], role, frame)

    need_val = cfg.validation is None
    need_test = cfg.test is None and cfg.test_fraction > 0
    big_enough = _check_split_size(ck, cfg, len(train), need_val, need_test) if need_val or need_test else True
    stratify = _check_classes(ck, cfg, train, task_name, names, splitting=need_val or need_test,
                              label_column=label_col, judge_rare=big_enough, federated=federated)
    if task_name != "regression":
        report.summary["train_label_counts"] = _class_counts(train, task_name, names)
    if tokenizer is not None:
        for role, frame in clean.items():
            _check_truncation(ck, cfg, files[role], frame, tokenizer, report.summary)
            _check_vocabulary(ck, cfg, files[role], frame, tokenizer, backbone, report.summary)

    if not report.ok:
        return None, report

    strat = _first_label(train, task_name) if stratify else None
    val_file, test_file = clean.get("validation"), clean.get("test")
    how = ""
    if need_val or need_test:
        tr, va, te = split_frame(train, validation_fraction=cfg.validation_fraction if need_val else 0.0,
                                 test_fraction=cfg.test_fraction if need_test else 0.0,
                                 seed=cfg.split_seed, stratify_labels=strat)
        how = f"{'stratified' if tr.attrs.get('stratified') else 'random'}, seed {cfg.split_seed}"
    else:
        tr, va, te = train, None, None
    validation = va if need_val else val_file
    if need_test:
        test = te
    elif test_file is not None:
        test = test_file
    else:
        test = train.iloc[:0]
    split_note = _split_note(cfg, need_val, need_test, how)
    parts = {"train": tr, "validation": validation, "test": test}
    for p in parts.values():
        p.attrs = {}
    report.summary["splits"] = {k: int(len(v)) for k, v in parts.items()}
    report.summary["split_note"] = split_note
    if task_name != "regression":
        report.summary["label_counts"] = {k: _class_counts(v, task_name, names) for k, v in parts.items()}
    data = PreparedData(task_name, names, text_col, pair_col, label_col,
                        tr.reset_index(drop=True), validation.reset_index(drop=True),
                        test.reset_index(drop=True), split_note, delimiter)
    return data, report


def _split_note(cfg: DataConfig, need_val: bool, need_test: bool, how: str) -> str:
    split = [s for s, need in (("validation", need_val), ("test", need_test)) if need]
    parts = []
    if split:
        parts.append(f"{' and '.join(split)} split from {_where(cfg.train)} ({how})")
    if not need_val:
        parts.append(f"validation from {cfg.validation}")
    if cfg.test is not None:
        parts.append(f"test from {cfg.test}")
    elif not need_test:
        parts.append("no test set (data.test_fraction is 0)")
    return "; ".join(parts)


def _check_classes(ck: _Checker, cfg: DataConfig, train: pd.DataFrame, task: TaskName,
                   names: list[str], *, splitting: bool, label_column: str = "label",
                   judge_rare: bool = True, federated: bool = False) -> bool:
    """Imbalance and too-small classes in train; returns whether the split can be stratified.
    `federated` (one client's share): one class or mostly rare ones are warnings, not errors."""
    severity = "warning" if federated else "error"
    also = "; the federation's other clients may hold the rest" if federated else ""
    if task == "regression" or train.empty:
        return False
    counts = _class_counts(train, task, names)
    path = cfg.train
    present = {n: c for n, c in counts.items() if c > 0}
    absent = [n for n, c in counts.items() if c == 0]
    if task == "classification" and len(present) < 2:
        ck.add(severity if present else "error", "too_few_examples",
               f"{_where(path)}: only one class ({', '.join(map(repr, present)) or 'none'}) among the usable "
               f"labels; a classifier needs examples of at least 2 classes{also}", path, (), len(present))
        return False
    rare_classes = [n for n, c in present.items() if c < MIN_CLASS_EXAMPLES]
    if judge_rare and len(present) >= 2 and 2 * len(rare_classes) > len(present):
        word, words = ("class", "classes") if task == "classification" else ("label", "labels")
        ck.add(severity, "too_few_examples",
               f"{_where(path)}: {len(rare_classes):,} of {len(present):,} {words} "
               f"({100 * len(rare_classes) / len(present):.0f}%) have fewer than {MIN_CLASS_EXAMPLES} "
               f"training examples ({len(train):,} usable rows, {len(train) / len(present):.1f} per "
               f"{word} on average; e.g. {', '.join(map(repr, rare_classes[:5]))}), so most {words} cannot "
               f"be learned: at most half of the {words} may have fewer than {MIN_CLASS_EXAMPLES} examples. "
               f"Check that data.label_column ({label_column!r}) holds labels and not ids or free text; "
               f"else merge rare {words} into broader ones (or an 'other' {word}) or add examples",
               path, (), len(rare_classes))
        return False
    if absent:
        ck.add("warning", "too_few_examples",
               f"{_where(path)}: {_plural(len(absent), 'label')} listed in {_label_set_key(cfg)} "
               f"{'has' if len(absent) == 1 else 'have'} no training examples ({', '.join(map(repr, absent))}); "
               f"the model cannot learn {'it' if len(absent) == 1 else 'them'}", path, (), len(absent))
    if len(present) >= 2:
        big, small = max(present.values()), min(present.values())
        if big / small > cfg.imbalance_ratio_warning:
            listed = ", ".join(f"{n} {c}" for n, c in sorted(present.items(), key=lambda kv: -kv[1]))
            ck.add("warning", "imbalance",
                   f"{_where(path)}: classes are imbalanced, largest/smallest = {big / small:.1f} (> "
                   f"data.imbalance_ratio_warning {cfg.imbalance_ratio_warning:g}): {listed}; judge the "
                   f"run by macro-F1 rather than accuracy, or add examples of the rare classes",
                   path, (), small)
    if not splitting:
        return False
    strat = _first_label(train, task)
    sizes = strat.value_counts()
    rare = sizes[sizes < 2]
    if len(rare):
        rare_names = [names[i] if i >= 0 else "(no label)" for i in rare.index]
        rows = train["row"].to_numpy()[strat.isin(rare.index).to_numpy()]
        ck.add("warning", "too_few_examples",
               f"{_where(path)}: {_plural(len(rare), 'class', 'classes')} {'has' if len(rare) == 1 else 'have'} "
               f"fewer than 2 examples ({', '.join(map(repr, rare_names[:10]))}) at {_rows_text(rows, path)}, "
               f"so the split cannot be stratified; using a random split instead (add examples of "
               f"these classes or remove them)", path, rows, len(rare))
        return False
    return True


def _check_split_size(ck: _Checker, cfg: DataConfig, n: int, need_val: bool, need_test: bool) -> bool:
    """An error when too few rows remain to train after the split; returns whether they suffice."""
    n_test = math.ceil(cfg.test_fraction * n) if need_test else 0
    n_val = math.ceil(cfg.validation_fraction * n) if need_val else 0
    if n - n_test - n_val < 1 or n < 2:
        ck.add("error", "too_few_examples",
               f"{_where(cfg.train)}: only {_plural(n, 'usable row')}, too few to split off validation/test "
               f"sets and still train; add rows or give data.validation and data.test files",
               cfg.train, (), n)
        return False
    return True


def _check_truncation(ck: _Checker, cfg: DataConfig, path: str, frame: pd.DataFrame, tokenizer,
                      summary: dict) -> None:
    if frame.empty:
        return
    limit = cfg.max_length * TRUNCATION_CHARS_PER_TOKEN
    texts, cut = _heads(frame["text"], limit)
    pairs = None
    if "text_pair" in frame:
        pairs, pair_cut = _heads(frame["text_pair"], limit)
        cut = cut | pair_cut  # a new array: _heads may return pandas' read-only view
    lengths = _token_lengths(tokenizer, texts, pairs)
    summary.setdefault("token_lengths", {})[path] = {
        "p50": int(np.percentile(lengths, 50)), "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()), "counted_chars": limit}
    over = lengths > cfg.max_length
    if over.any():
        rows = frame["row"].to_numpy()[over]
        longest = int(lengths.argmax())
        count = (f"at least {int(lengths[longest])} tokens (counted on its first {limit:,} characters)"
                 if cut[longest] else f"{int(lengths[longest])} tokens")
        ck.add("warning", "truncation",
               f"{_where(path)}: {_plural(len(rows), 'text')} ({100 * len(rows) / len(frame):.1f}%) are longer "
               f"than data.max_length = {cfg.max_length} tokens and will be truncated, at "
               f"{_rows_text(rows, path)}; the longest has {count}: raise "
               f"data.max_length if the end of a text matters", path, rows, len(rows))


def _heads(texts: pd.Series, limit: int) -> tuple[list[str], np.ndarray]:
    """Each text's first `limit` characters, and which texts were cut."""
    cut = (texts.str.len() > limit).to_numpy()
    if not cut.any():
        return texts.tolist(), cut
    return texts.str.slice(0, limit).tolist(), cut


def _check_vocabulary(ck: _Checker, cfg: DataConfig, path: str, frame: pd.DataFrame, tokenizer,
                      backbone: str | None, summary: dict) -> None:
    """The [UNK] share of the backbone's tokens, and the scripts of the letters, on a sample of the
    file's texts (see tunery.data.coverage for the thresholds)."""
    from tunery.backbones import backbone_info
    from tunery.data import coverage

    if frame.empty:
        return
    pos = coverage.sample_positions(len(frame))
    texts = frame["text"].iloc[pos]
    if "text_pair" in frame:
        texts = texts + " " + frame["text_pair"].iloc[pos]
    info = backbone_info(backbone) if backbone else None
    cov = coverage.measure(tokenizer, texts.tolist(), frame["row"].to_numpy()[pos], info.languages if info else None)
    details = cov.details()
    summary.setdefault("vocabulary", {})[path] = details
    name = f"backbone {backbone!r}" if backbone else "the backbone"
    langs = (f"{name} covers {info.languages}" if info else
             f"{name} is not in tunery's catalog, so only its [UNK] share is judged")
    sampled = f"{cov.texts:,} texts measured" + (f" of {len(frame):,}" if cov.texts < len(frame) else "")
    share = cov.unk_token_share
    if share >= coverage.UNK_WARNING:
        error = share >= coverage.UNK_ERROR and not cfg.allow_vocabulary_mismatch
        allowed = (" (data.allow_vocabulary_mismatch is true: reported as a warning)"
                   if share >= coverage.UNK_ERROR and cfg.allow_vocabulary_mismatch else "")
        ck.add("error" if error else "warning", "vocabulary",
               f"{_where(path)}: the vocabulary of {name} misses much of this text: {100 * share:.1f}% of its "
               f"tokens are [UNK] (unknown) and {100 * cov.unk_text_share:.0f}% of texts have some ({sampled}; "
               f"a warning from {100 * coverage.UNK_WARNING:.0f}%, an error from {100 * coverage.UNK_ERROR:.0f}%)"
               f"{allowed}. Letters by script: {coverage.describe_scripts(cov.scripts)}; {langs}. The model "
               f"cannot read the [UNK] parts and is likely to lose to the TF-IDF baseline. Fix: "
               f"{coverage.suggestion(cov)}"
               + ("; or set data.allow_vocabulary_mismatch: true to train anyway" if error else ""),
               path, cov.unk_rows, cov.unk_texts, details=details)
    elif cov.uncovered_share >= coverage.SCRIPT_WARNING:
        ck.add("warning", "vocabulary",
               f"{_where(path)}: {100 * cov.uncovered_share:.0f}% of the letters are in scripts {name} was not "
               f"trained on ({coverage.describe_scripts(cov.uncovered)}; it covers {info.languages}): its "
               f"tokenizer knows the characters ({100 * share:.1f}% [UNK] tokens, {sampled}) but the model has "
               f"not learned the language. Fix: {coverage.suggestion(cov)}", path, (), 0, details=details)


def check_file(path: str, cfg: DataConfig, *, task: TaskName, label_names: list[str], text_column: str,
               text_pair_column: str | None, label_column: str, delimiter: str | None = None,
               tokenizer=None, backbone: str | None = None) -> tuple[pd.DataFrame | None, ValidationReport]:
    """Check one labelled file against a trained model's columns and labels (to evaluate it),
    with the checks training runs on each file: texts, labels, duplicates, truncation and
    vocabulary. `label_names` are the model's (names from data.label_names are mapped back to the
    file's values). Returns the usable rows as text/text_pair/label/row, or None with errors."""
    ck = _Checker(cfg)
    report = ValidationReport(ck.findings, {"files": {}})
    df = _read(ck, report, "evaluation", path)
    if df is None:
        return None, report
    cols = [str(c) for c in df.columns]
    lost = [c for c in (text_column, text_pair_column, label_column) if c is not None and c not in cols]
    if lost:
        ck.add("error", "missing_column",
               f"{_where(path)}: no column{'s' if len(lost) > 1 else ''} {', '.join(map(repr, lost))}, which the "
               f"run was trained with{_did_you_mean(lost[0], cols)}; available columns: {', '.join(cols)}; "
               f"rename the column to match", path)
        return None, report
    values = {name: value for value, name in (cfg.label_names or {}).items()} if task == "classification" else {}
    raw_names = [values.get(n, n) for n in label_names]
    frame = _check_file(ck, "evaluation", path, df, text_column, text_pair_column, label_column, task,
                        raw_names, delimiter, None)
    _check_duplicates(ck, path, frame, task, label_names)
    if tokenizer is not None:
        _check_truncation(ck, cfg, path, frame, tokenizer, report.summary)
        _check_vocabulary(ck, cfg, path, frame, tokenizer, backbone, report.summary)
    if task != "regression":
        report.summary["label_counts"] = {"evaluation": _class_counts(frame, task, label_names)}
    return (frame if report.ok else None), report

"""A teacher's logits kept by text, shared by every distillation from the same teacher run.

Labelling is the slow part of distillation on a CPU (an mpnet-base teacher reads ~110 short texts/s on
two cores; 164,000 SST-2 rows with their augmented copies take over an hour). Runs from one teacher
mostly read the same texts (the gold rows, and copies drawn with the same seed), so the logits are kept
per teacher, keyed by text, under ``<TUNERY_HOME>/cache/teacher-logits/<teacher>/``; a second run labels
only the texts no run labelled before. Each part file holds `keys` (a 16-byte digest of a row's text and
pair) and `logits`, and is written whole (a temporary file, then a rename) after every `chunk` rows, so a
labelling pass that is killed keeps what it finished and a restart labels the rest.

A teacher is named by its run directory's name and its tunery.json `created_at`: a run retrained under
the same name gets a fresh cache, and a teacher copied to another machine or path (a GPU box that labels,
a CPU box that trains) finds its cache there. (Folders named by the older key, the resolved path, are
renamed to the new name when first looked up.) Nothing here knows what a teacher is: `label(texts,
pairs)` computes the logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Labeller = Callable[[list[str], "list[str] | None"], np.ndarray]


def row_keys(texts: list[str], pairs: list[str] | None) -> list[bytes]:
    """A 16-byte digest of each row's text (and pair, where the task reads pairs)."""
    pairs_ = pairs if pairs is not None else [None] * len(texts)
    return [hashlib.blake2b(json.dumps([t, p]).encode(), digest_size=16).digest() for t, p in zip(texts, pairs_)]


def teacher_folder(home: Path, run: Path, created_at: str | None) -> Path:
    """The cache folder of the teacher run at `run` (made when first written): named by the run's
    directory name and `created_at`, not its path."""
    root = home / "cache" / "teacher-logits"
    folder = root / _digest([run.name, created_at])
    legacy = root / _digest([str(run.resolve()), created_at])  # the key before 2026-12-05
    if legacy.is_dir() and not folder.exists():
        try:
            os.replace(legacy, folder)
            log.info("teacher-logit cache %s renamed to %s (named by the run, not its path)", legacy, folder)
        except OSError:  # another process renamed it first, or the home is read-only: read it where it is
            return folder if folder.exists() else legacy
    return folder


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:20]


def known_logits(folder: Path) -> dict[bytes, np.ndarray]:
    """Every row the folder's parts hold, by key; an unreadable part (cut short by a crash of an older
    writer, or damaged) is skipped with a warning: its rows are labelled again."""
    found: dict[bytes, np.ndarray] = {}
    for part in sorted(folder.glob("part-*.npz")):
        try:
            with np.load(part) as z:
                keys, logits = z["keys"], z["logits"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("teacher-logit cache part %s unreadable (%s): its rows are labelled again", part, exc)
            continue
        found.update(zip((k.tobytes() for k in keys), logits))
    return found


def _write_part(folder: Path, keys: list[bytes], logits: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}"
    tmp = folder / f".{name}.tmp.npz"
    # keys as (N, 16) bytes, not numpy's "S16", which drops a digest's trailing zero bytes
    raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
    np.savez(tmp, keys=raw, logits=logits.astype(np.float32))
    os.replace(tmp, folder / f"{name}.npz")


def cached_logits(folder: Path, texts: list[str], pairs: list[str] | None, label: Labeller, *,
                  chunk: int = 4096) -> np.ndarray:
    """The logits (N, C) of every row, in row order: rows the folder holds are read, the others (each
    distinct row once) are labelled `chunk` at a time by `label(texts, pairs)`, and every chunk is
    saved as it completes."""
    keys = row_keys(texts, pairs)
    known = known_logits(folder)
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k not in known:
            first.setdefault(k, i)
    missing = list(first.values())
    log.info("teacher logits: %d of %d rows cached, %d distinct rows to label",
             sum(k in known for k in keys), len(keys), len(missing))
    for start in range(0, len(missing), chunk):
        idx = missing[start:start + chunk]
        logits = np.asarray(label([texts[i] for i in idx], None if pairs is None else [pairs[i] for i in idx]),
                            dtype=np.float32)
        part_keys = [keys[i] for i in idx]
        _write_part(folder, part_keys, logits)
        known.update(zip(part_keys, logits))
        log.info("teacher logits: labelled %d of %d", min(start + chunk, len(missing)), len(missing))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([known[k] for k in keys]).astype(np.float32)

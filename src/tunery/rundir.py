"""The run directory: the unit of exchange between training and everything downstream.

runs/<name>.partial/  while training (checkpoints, log.jsonl); renamed to runs/<name>/ when
complete, so a directory without the suffix is always a finished run with tunery.json.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tunery.errors import RunError

META = "tunery.json"
PARTIAL = ".partial"


def partial_dir(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def final_dir(partial: Path) -> Path:
    return partial.with_name(partial.name[: -len(PARTIAL)])


def is_complete(path: Path) -> bool:
    return not path.name.endswith(PARTIAL) and (path / META).is_file() and (path / "model").is_dir()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a plain open() gives a new file: 0644 under umask 022, 0640 under 027."""
    return 0o666 & ~current_umask()


def follow_umask(path: Path) -> None:
    """Give `path` (a file, or a directory and everything in it) the permissions that open() and
    mkdir() would have given it. Some writers create private files whatever the umask
    (tempfile.mkstemp, safetensors: 0600), which a web server or another user then cannot read."""
    path = Path(path)
    umask = current_umask()
    todo = [path]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~umask)
            todo.extend(p.iterdir())
        elif p.is_file():
            os.chmod(p, 0o666 & ~umask)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary sibling, then rename), with the permissions open()
    would give it (the umask's); on failure (a full disk) neither a torn file nor the temporary one
    is left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary sibling, then rename)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_meta(run: Path) -> dict:
    return json.loads((run / META).read_text(encoding="utf-8"))


def run_at_path(ref: str | Path) -> Path | None:
    """The completed run directory ``ref`` names as a path; None when ``ref`` is no path here and
    may be a name (`tunery.refs.find_run` looks names up). A RunError when the path is an
    unfinished run or not a run directory."""
    path = Path(ref)
    if is_complete(path):
        return path.resolve()
    if path.name.endswith(PARTIAL) or partial_dir(path).exists():
        raise RunError(f"run {str(ref)!r} did not finish; continue it with `tunery train --resume {ref}`")
    if path.exists():
        raise RunError(f"{str(ref)!r} is not a tunery run directory (it has no {META} and model/)")
    if "/" in str(ref) and not any(c in str(ref) for c in "@:"):
        raise RunError(f"run directory {str(ref)!r} does not exist")
    return None


def find_partial(ref: str | Path, extra: list[Path] = ()) -> Path:
    """The .partial directory of an interrupted run at ``ref`` (a path), or the first of ``extra``
    (where a name was recorded) that is one."""
    path = Path(ref)
    candidates = [path] if path.name.endswith(PARTIAL) else [partial_dir(path)]
    candidates += list(extra)
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    if is_complete(path):
        raise RunError(f"run {str(ref)!r} is already complete; nothing to resume")
    raise RunError(f"no interrupted run found for {str(ref)!r} (looked for {', '.join(map(str, candidates))})")

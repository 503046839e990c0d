"""Run references, one floor above the run directory: a path, a run name or a registry ref
(``sentiment``, ``sentiment@2``, ``sentiment:prod``) -> a run directory. The run directory
(`tunery.rundir`) is a plain folder contract and knows no database; names are looked up here, in
the store."""

from __future__ import annotations

from pathlib import Path

from tunery.errors import RunError
from tunery.rundir import PARTIAL, is_complete, partial_dir, find_partial, run_at_path


def registered_run(version) -> Path:
    """The run directory of a registered version (a `tunery.store.ModelVersion`). When it is gone
    (moved or deleted), a RunError that says where it was and how to re-point or remove the entry."""
    path = Path(version.run_path)
    if is_complete(path):
        return path
    what = (
        "no longer exists"
        if not path.exists()
        else "is no longer a complete run directory (it needs tunery.json and model/)"
    )
    raise RunError(
        f"model {version.ref} is registered at {path}, which {what}: the run was moved or deleted. "
        f"If it was moved, re-point the entry with `tunery models relocate {version.ref} NEW_DIR`; "
        f"if it is gone, remove the entry with `tunery models delete {version.ref}`"
    )


def _store_lookup(ref: str) -> Path:
    from tunery.store import Store

    store = Store()
    try:
        version = store.resolve_model(ref)
    except RunError as model_err:
        try:
            return Path(store.get_run(ref).path)
        except RunError:
            raise model_err from None
    return registered_run(version)  # says where a moved run was and how to re-point it


def find_run(ref: str | Path) -> Path:
    """A completed run from a path, a run name, or a registry name (`sentiment`, `sentiment@2`,
    `sentiment:prod`)."""
    found = run_at_path(ref)
    if found is not None:
        return found
    found = _store_lookup(str(ref))
    if not is_complete(found):
        raise RunError(f"{str(ref)!r} points to {found}, which is not a complete run directory")
    return found


def find_resumable(ref: str | Path) -> Path:
    """The .partial directory of an interrupted run, from its path or its name (looked up in the
    store when no directory of that name is here)."""
    path = Path(ref)
    extra: list[Path] = []
    if not path.exists() and "/" not in str(ref):
        try:
            from tunery.store import Store

            recorded = Path(Store().get_run(str(ref)).path)
            extra.append(recorded if recorded.name.endswith(PARTIAL) else partial_dir(recorded))
        except RunError:
            pass
    return find_partial(ref, extra)

"""Where the store lives: ``TUNERY_DB_URL``, else a SQLite file in ``TUNERY_HOME`` (by default the
per-user data directory, the same from every working directory)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def user_home() -> Path:
    """The per-user default store directory: the platform's user data directory for "tunery"
    (~/.local/share/tunery on Linux, following XDG_DATA_HOME), the same from every directory."""
    try:
        from platformdirs import user_data_path
    except ImportError:  # platformdirs is a dependency; this keeps XDG's rule where it is missing
        base = os.environ.get("XDG_DATA_HOME", "").strip()
        return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "tunery"
    return user_data_path("tunery", appauthor=False)


def tunery_home() -> Path:
    """The store directory: ``TUNERY_HOME`` if set, else `user_home()`. Absolute."""
    home = os.environ.get("TUNERY_HOME")
    if home:
        return Path(home).expanduser().resolve()
    home_dir = user_home().expanduser().resolve()
    _warn_about_local_store(home_dir)
    return home_dir


_warned_local: set[Path] = set()


def _warn_about_local_store(home: Path) -> None:
    """Before, the default store was ./.tunery of the working directory: say so, once, where such
    a store exists, rather than show an empty list of runs without a word."""
    local = Path(".tunery").resolve()
    if (local / "tunery.db").is_file() and local != home and local not in _warned_local:
        _warned_local.add(local)
        log.warning("a tunery store exists in this directory (%s), but the store used is %s (the default since "
                    "tunery keeps one store per user); to keep using the one here, set TUNERY_HOME=%s",
                    local, home, local)


def default_db_url() -> str:
    """``TUNERY_DB_URL`` if set; else ``sqlite:///<TUNERY_HOME>/tunery.db``, TUNERY_HOME defaulting to
    the per-user data directory (`user_home()`), so every directory sees the same runs.

    Nothing is created here; the directory appears when a Store first connects.
    """
    url = os.environ.get("TUNERY_DB_URL")
    if url:
        return url
    return f"sqlite:///{tunery_home() / 'tunery.db'}"

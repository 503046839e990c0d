"""Headless Chromium for tests: screenshot a page (a file or a URL) and judge it by numbers.

The binary is Debian's `chromium-headless-shell` (or `chromium`), installed by .ci/run. Without it
the browser tests are skipped with the reason, unless ``TUNERY_REQUIRE_PG=1`` (set by CI), which
makes that a failure, as for the PostgreSQL tests (tests/pg.py).

Use::

    from tests.browser import chromium_or_skip, screenshot, ink_share

    def test_page(tmp_path):
        chromium_or_skip()
        png = screenshot(tmp_path / "report.html", tmp_path / "shot.png", width=1280, height=2000)
        assert ink_share(png) > 0.02  # the page is not blank

Screenshots are compared by size and by non-blank content (share of non-white pixels), never
by eye and never by timing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ENV_REQUIRE = "TUNERY_REQUIRE_PG"
_CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
               "headless_shell")
_EXTRA_DIRS = ("/usr/lib/chromium", "/usr/lib/chromium-headless-shell")


def find_chromium() -> str | None:
    """The path of a headless-capable Chromium binary, or None."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    for d in _EXTRA_DIRS:
        for name in ("chromium-headless-shell", "headless_shell", "chromium"):
            p = Path(d) / name
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    return None


def chromium_or_skip() -> str:
    """The Chromium binary; skips the test when there is none (fails instead under CI)."""
    binary = find_chromium()
    if binary is None:
        reason = ("no headless Chromium found (looked for " + ", ".join(_CANDIDATES) + "); install "
                  "it with `apt-get install -y chromium-headless-shell` (.ci/run does)")
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(reason + f"; {ENV_REQUIRE}=1 requires it")
        pytest.skip(reason)
    return binary


def _url(target: str | Path) -> str:
    s = str(target)
    if "://" in s:
        return s
    return Path(s).resolve().as_uri()


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = chromium_or_skip()
    # A private profile directory: two tests (or two sessions) never share Chromium's lock files.
    with tempfile.TemporaryDirectory(prefix="tunery-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--disable-dev-shm-usage", "--mute-audio", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(target: str | Path, out: Path, *, width: int = 1280, height: int = 2000,
               timeout: float = 60) -> Path:
    """Render `target` (a file path or a URL) in headless Chromium and write a PNG to `out`.

    Raises AssertionError with Chromium's output when no screenshot was written."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    proc = _run([f"--screenshot={out}", f"--window-size={width},{height}", _url(target)], timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise AssertionError(f"Chromium wrote no screenshot of {target} to {out} "
                             f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return out


def dump_dom(target: str | Path, *, width: int = 1280, height: int = 2000, timeout: float = 60) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom), as HTML text, laid out in a
    window of `width` x `height` (as `screenshot` does, so measurements match the screenshot)."""
    proc = _run(["--dump-dom", f"--window-size={width},{height}", _url(target)], timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"Chromium could not dump the DOM of {target} "
                             f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def ink_share(png: Path | object, box: tuple[int, int, int, int] | None = None,
              threshold: int = 245) -> float:
    """Share (0..1) of pixels that are not (near-)white in the PNG (or a PIL image), optionally
    within `box` = (left, top, right, bottom)."""
    from PIL import Image

    img = png if hasattr(png, "convert") else Image.open(png)
    img = img.convert("L")
    if box is not None:
        img = img.crop(box)
    hist = img.histogram()
    total = sum(hist)
    return 0.0 if total == 0 else sum(hist[:threshold]) / total

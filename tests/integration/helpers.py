from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def cli(*args: str, cwd: Path, expect: int | None = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `tunery` command line in a subprocess."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "tunery", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml


def cli(*args: str, cwd: Path, expect: int | None = 0, timeout: float = 300,
        process: bool = False) -> subprocess.CompletedProcess:
    """Run the `tunery` command line and return its exit code, stdout and stderr.

    By default it runs in this process through click's test runner: the same typer app, argument
    parsing, error guard and exit codes as `python -m tunery`, without the 5-8 s that each new
    process spends importing torch and transformers. `process=True` runs the real command in a
    subprocess, for what only a process shows (signals, the entry point, two commands at once);
    tests/integration/test_resume.py and the serving tests do that throughout."""
    if process:
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        proc = subprocess.run([sys.executable, "-m", "tunery", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    else:
        proc = _in_process(list(args), cwd)
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    from typer.testing import CliRunner

    from tunery.cli import app

    with _restored_process_state(cwd):
        result = CliRunner().invoke(app, args, prog_name="tunery", env={"COLUMNS": "200", "NO_COLOR": "1"},
                                    catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback  # an exception the CLI's guard let through: show it as Python would

        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["tunery", *args], result.exit_code, result.stdout, stderr)


@contextmanager
def _restored_process_state(cwd: Path):
    """What a command changes for its process, put back: the directory, the SIGTERM handler,
    the root logger's handlers and level."""
    old_cwd, old_term = os.getcwd(), signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        signal.signal(signal.SIGTERM, old_term)
        root.handlers[:] = old_handlers
        root.setLevel(old_level)


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path

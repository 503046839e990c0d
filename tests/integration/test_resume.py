"""A run killed with SIGKILL and resumed reaches the same final metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli, write_config


def _config(tmp_path, name, backbone, rows=1600, eval_every=40, **extra):
    data = tmp_path / "reviews.csv"
    if not data.exists():
        make_dataset("binary", n=rows).to_csv(data, index=False)
    # Many small steps and frequent checkpoints, so the kill lands mid-run.
    # Accumulation with a short last window, a log interval that does not divide the checkpoint
    # interval, and early stopping armed: all of it must survive the kill.
    train = fast_train(epochs=3, batch_size=8, lr=2e-3, eval_every_steps=eval_every, log_every_steps=7,
                       grad_accum_steps=3, early_stopping_patience=5, ema_decay=0.9, **extra)
    return write_config(tmp_path / f"{name}.yaml", {"name": name, "data": {"train": str(data)},
                                                    "model": {"backbone": backbone}, "train": train})


@pytest.mark.parametrize("objective", [
    {"adversarial": {"method": "fgm", "epsilon": 0.05}},
    {"adversarial": {"method": "pgd", "epsilon": 0.02, "steps": 2}},
    {"adversarial": {"method": "freelb", "epsilon": 0.05, "steps": 2}},  # its random starts continue exactly
    {"rdrop": 1.0},  # its dropout masks come from the restored RNG
], ids=["fgm", "pgd", "freelb", "rdrop"])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, st_backbone, objective):
    # The sentence-transformers backbone gets the added mean-pooling layer, and each robust objective
    # adds perturbed or doubled passes per step: all of it must rebuild and replay exactly on resume.
    # 400 rows (320 train: 40 batches of 8 an epoch, 13 accumulation windows of 3 and a short one of 1):
    # each objective costs 2-4 passes a step; the kill still lands mid-run (checkpoints every 20 of 42
    # steps), and the log interval (7) does not divide the checkpoint interval
    cli("train", str(_config(tmp_path, "straight", st_backbone, rows=400, eval_every=20, **objective)),
        "--no-progress", cwd=tmp_path)

    proc = subprocess.Popen([sys.executable, "-m", "tunery", "train",
                             str(_config(tmp_path, "killed", st_backbone, eval_every=20, **objective)),
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "runs" / "killed.partial" / "checkpoints" / "last" / "trainer.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert state.exists(), "the run never wrote a checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs" / "killed").exists(), "the run finished before the kill; the test proves nothing"

    listed = json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout)
    assert {r["name"]: r["status"] for r in listed}["killed"] == "interrupted"

    cli("train", "--resume", "runs/killed", "--no-progress", cwd=tmp_path)
    straight = json.loads((tmp_path / "runs" / "straight" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "runs" / "killed" / "metrics.json").read_text())
    assert resumed["model"] == straight["model"]
    assert resumed["training"]["steps"] == straight["training"]["steps"]
    def records(name):  # the log without timings
        lines = (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("samples_per_s", "eval_seconds")}
                for line in lines]

    assert records("killed") == records("straight")
    a = load_file(tmp_path / "runs" / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "killed" / "model" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert any(".layer.2." in k for k in a)  # the tiny 2-layer BERT got its mean-pooling layer
    record = json.loads(cli("runs", "show", "killed", "--json", cwd=tmp_path).stdout)
    assert record["status"] == "completed" and record["attempts"] == 2


def test_resume_of_a_complete_run_is_refused(tmp_path, tiny_backbone):
    cli("train", str(_config(tmp_path, "done", tiny_backbone)), "--no-progress", "--set", "train.epochs=1", cwd=tmp_path)
    proc = cli("train", "--resume", "runs/done", cwd=tmp_path, expect=1)
    assert "already complete" in proc.stderr


def test_sigterm_records_an_interrupted_run_that_resumes(tmp_path, tiny_backbone):
    proc = subprocess.Popen([sys.executable, "-m", "tunery", "train", str(_config(tmp_path, "termed", tiny_backbone)),
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    state = tmp_path / "runs" / "termed.partial" / "checkpoints" / "last" / "trainer.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "resume" in stderr
    record = json.loads(cli("runs", "show", "termed", "--json", cwd=tmp_path).stdout)
    assert record["status"] == "interrupted" and "signal" in record["error"]
    cli("train", "--resume", "termed", "--no-progress", cwd=tmp_path)
    assert json.loads(cli("runs", "show", "termed", "--json", cwd=tmp_path).stdout)["status"] == "completed"

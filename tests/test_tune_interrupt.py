"""SIGTERM to `tunery tune` (a scheduler's stop, `kill PID`) reaches its trial processes, which run
in sessions of their own: the trial's run is recorded as interrupted, the trial is queued again with
its parameters for `tunery tune --resume`, and no trial process is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import fast_train, make_dataset

STUDY = "stopped"


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigterm_reaches_the_trial_process_whose_trial_is_queued_again(tiny_backbone, tmp_path):
    from optuna.trial import TrialState

    from tunery.store import Store
    from tunery.tune import study as studies

    home = tmp_path / ".tunery"
    url = f"sqlite:///{home / 'tunery.db'}"
    make_dataset("binary", n=240).to_csv(tmp_path / "reviews.csv", index=False)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "runs"), "data": {"train": "reviews.csv"}, "model": {"backbone": tiny_backbone},
        "train": fast_train(epochs=500), "evaluate": {"baseline": False},  # trains until it is stopped
        "search": {"train.lr": {"log": [3e-3, 8e-3]}}}))
    env = {**os.environ, "TUNERY_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    tune = subprocess.Popen([sys.executable, "-m", "tunery", "tune", "tune.yaml", "--trials", "2", "--study", STUDY],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = tmp_path / "runs" / STUDY / f"{STUDY}-t0000.partial" / "log.jsonl"
        _wait_for(lambda: log.exists() and log.stat().st_size > 0 or tune.poll() is not None, 180,
                  "the first trial to train")
        assert tune.poll() is None, tune.communicate()
        trial_pid = Store(url).get_run(f"{STUDY}-t0000").pid
        assert b"tunery.tune.trial" in Path(f"/proc/{trial_pid}/cmdline").read_bytes()
        assert os.getsid(trial_pid) == trial_pid  # its own session: only the worker's signal reaches it

        tune.send_signal(signal.SIGTERM)
        out, err = tune.communicate(timeout=120)
    finally:
        if tune.poll() is None:
            tune.kill()
    assert tune.returncode == 143, err
    assert "tunery tune --resume STUDY" in err
    assert not Path(f"/proc/{trial_pid}").exists()  # no orphan trains on
    trials = studies.load(STUDY, url).get_trials()
    # the trial's own account of how it ended, for a failure below
    ended = [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    assert [r.name for r in Store(url).list_runs()] == [f"{STUDY}-t0000"], (ended, err)
    assert Store(url).get_run(f"{STUDY}-t0000").status == "interrupted", (ended, err)
    assert trials[0].state == TrialState.FAIL, err
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING  # run by --resume, not lost
    assert retry[0].system_attrs["fixed_params"] == trials[0].params


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends():
    from tunery.interrupt import Terminated, deferred, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    sigterm_as_interrupt()
    ours = signal.getsignal(signal.SIGTERM)
    steps = []
    try:
        try:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler would run here, were it not held
                steps.append("write finished")
            steps.append("after the block")
        except Terminated:
            steps.append("raised")
        assert steps == ["write finished", "raised"]
        assert signal.getsignal(signal.SIGTERM) is ours  # tunery's handler is back, not the holder
        with deferred():
            steps.append("quiet")  # no signal: nothing raised
    finally:
        signal.signal(signal.SIGTERM, before)
    assert steps[-1] == "quiet"

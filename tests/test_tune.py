"""tunery tune: one study on SQLite run by 2 local workers through `tunery tune --join` (module-scoped,
shared by the tests below), in which one trial process is SIGKILLed mid-trial and one trial has an
absurd learning rate; then the search-space, budget and deadline rules without any study.

The study: trial 0 is the config's own recipe, 1 to 3 are sampled, 4 has train.lr = 1.0. Trial 2's
process is killed once it trains (its retry comes last). With 2 workers, a trial starts only after all
but one of the trials before it finished, so when trial 4 starts, at least 2 of 0, 1 and 3 are
complete: the median pruner has its bar. The objective is the validation ROC AUC, which tells the
toy model from the absurd one from the first evaluation on (0.8 against 0.6 or less); the median
pruner waits for the second (no trial is pruned in its first epoch)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import fast_train, make_dataset
from tests.integration.helpers import cli
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures)

STUDY = "toy"
ABSURD_LR = 1.0


def _kill_when_training(run_dir: Path, url: str, done: threading.Event, killed: list) -> None:
    """SIGKILL the process training `run_dir` once its log has a line (it is mid-trial)."""
    from tunery.store import Store

    log = Path(str(run_dir) + ".partial") / "log.jsonl"
    while not done.is_set():
        if log.exists() and log.stat().st_size:
            pid = Store(url).get_run(run_dir.name).pid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            assert b"tunery.tune.trial" in cmdline, cmdline  # only ever a trial process of ours
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        done.wait(0.05)


@pytest.fixture(scope="module")
def study(tiny_backbone, tmp_path_factory):
    from tunery.config import load_config
    from tunery.tune import study as studies
    from tunery.tune.worker import create_study

    home = tmp_path_factory.mktemp("tune")
    old = os.environ.get("TUNERY_HOME")
    os.environ["TUNERY_HOME"] = str(home / ".tunery")
    url = f"sqlite:///{home / '.tunery' / 'tunery.db'}"
    make_dataset("binary", n=240).to_csv(home / "reviews.csv", index=False)
    config = home / "tune.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(home / "runs"), "data": {"train": "reviews.csv"}, "model": {"backbone": tiny_backbone},
        "train": fast_train(metric="roc_auc"), "evaluate": {"baseline": False},
        "search": {"train.lr": {"log": [3e-3, 8e-3]}, "train.batch_size": {"choice": [16, 32]}}}))
    create_study(load_config(config), study=STUDY, trials=4, heartbeat_s=1, url=url)
    studies.load(STUDY, url).enqueue_trial({"train.lr": ABSURD_LR}, user_attrs={"recipe": "absurd"})
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_when_training,
                              args=(home / "runs" / STUDY / f"{STUDY}-t0002", url, done, killed))
    killer.start()
    try:
        proc = cli("tune", "--join", STUDY, "--workers", "2", cwd=home, timeout=900)
    finally:
        done.set()
        killer.join()
        if old is None:
            os.environ.pop("TUNERY_HOME", None)
        else:
            os.environ["TUNERY_HOME"] = old
    return {"url": url, "home": home, "stdout": proc.stdout, "killed": killed, "config": config,
            "study": studies.load(STUDY, url)}


def _trials(study, *states):
    from optuna.trial import TrialState

    return [t for t in study["study"].get_trials() if not states or t.state in [TrialState[s] for s in states]]


def test_two_workers_finish_exactly_the_requested_trials_each_enqueued_config_once(study):
    finished = _trials(study, "COMPLETE", "PRUNED")
    assert len(finished) == 5
    assert [t.user_attrs.get("recipe") for t in finished].count("default") == 1
    assert [t.params["train.lr"] for t in finished].count(ABSURD_LR) == 1
    default = next(t for t in finished if t.user_attrs.get("recipe") == "default")
    assert default.params == {"train.lr": 5e-3, "train.batch_size": 16}  # the config's own recipe
    sampled = [t.params["train.lr"] for t in _trials(study) if t.number in (1, 2, 3)]
    assert len(set(sampled)) == 3  # each trial process samples with a seed of its own


def test_a_killed_trial_is_failed_and_retried_with_the_same_parameters(study):
    from tunery.store import Store

    assert study["killed"], "the trial process was never seen training"
    failed = _trials(study, "FAIL")
    assert [t.number for t in failed] == [2]
    retries = [t for t in study["study"].get_trials() if t.system_attrs.get("failed_trial") == 2]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == failed[0].params
    assert Store(study["url"]).get_run(f"{STUDY}-t0002").status == "interrupted"
    killed = study["home"] / "runs" / STUDY / f"{STUDY}-t0002.partial"
    assert not (killed / "checkpoints").exists()  # its training state went with --keep best


def test_a_trial_with_an_absurd_learning_rate_is_pruned_and_its_run_kept(study):
    from tunery.store import Store

    absurd = next(t for t in _trials(study) if t.params.get("train.lr") == ABSURD_LR)
    assert absurd.state.name == "PRUNED"
    assert absurd.user_attrs["stopped_by"] == "pruned"
    assert len(absurd.intermediate_values) == 2  # at its first evaluation after the first epoch
    record = Store(study["url"]).get_run(absurd.user_attrs["run"])
    assert (record.status, record.study, record.trial) == ("pruned", STUDY, absurd.number)
    assert (Path(absurd.user_attrs["run_dir"]) / "metrics.json").exists()


def test_every_trial_is_a_run_linked_to_its_study(study):
    from tunery.store import Store

    records = Store(study["url"]).list_runs(study=STUDY)
    assert sorted(r.trial for r in records) == [t.number for t in _trials(study)]


def test_the_best_run_is_kept_and_predicts_and_the_others_drop_their_weights(study):
    import tunery
    from tunery.tune.study import best_trial

    best = best_trial(study["study"])
    assert str(best.user_attrs["run_dir"]) in study["stdout"]
    clf = tunery.load(best.user_attrs["run_dir"])
    assert clf.predict("a wonderful film")["label"] in ("positive", "negative")
    for t in _trials(study, "COMPLETE", "PRUNED"):
        run = Path(t.user_attrs["run_dir"])
        assert (run / "metrics.json").exists() and (run / "config.yaml").exists()
        assert (run / "model").exists() == (t.number == best.number)


def test_study_html_draws_the_study_offline_and_links_each_run(study):
    page = (study["home"] / "runs" / STUDY / "study.html").read_text()
    for title in ("Optimisation history", "Intermediate values", "Parameter importances", "Parallel coordinates"):
        assert title in page
    assert "<script src=" not in page and "Plotly.newPlot" in page  # plotly.js inline: no network
    for t in _trials(study, "COMPLETE", "PRUNED"):
        assert f"href='{t.user_attrs['run']}/report.html'" in page


def test_studies_list_and_show(study, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(study["home"] / ".tunery"))
    listing = cli("studies", "list", cwd=study["home"]).stdout
    assert STUDY in listing
    shown = cli("studies", "show", STUDY, cwd=study["home"]).stdout
    assert "pruned" in shown and "retry of 2" in shown and "best" in shown


def test_join_of_a_finished_study_runs_nothing_more(study, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(study["home"] / ".tunery"))
    before = len(_trials(study))
    cli("tune", "--join", STUDY, cwd=study["home"])
    from tunery.tune import study as studies

    assert len(studies.load(STUDY, study["url"]).get_trials()) == before


def _toy_config(home: Path, backbone: str, **extra) -> Path:
    make_dataset("binary", n=240).to_csv(home / "reviews.csv", index=False)
    config = home / "tune.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(home / "runs"), "data": {"train": "reviews.csv"}, "model": {"backbone": backbone},
        "train": fast_train(epochs=2), "evaluate": {"baseline": False}, **extra}))
    return config


def test_a_study_on_postgresql_with_two_workers_finishes_its_trials_once_each(pg_url, tiny_backbone, tmp_path,
                                                                           monkeypatch):
    from optuna.trial import TrialState

    from tunery.store import Store
    from tunery.tune import study as studies

    monkeypatch.setenv("TUNERY_DB_URL", pg_url)  # the study and the trials' store records go there
    config = _toy_config(tmp_path, tiny_backbone, search={"train.lr": {"log": [3e-3, 8e-3]}})
    proc = cli("tune", str(config), "--trials", "2", "--workers", "2", "--study", "pg", "--register", "pgmodel",
               cwd=tmp_path, timeout=900)
    trials = studies.load("pg", pg_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params == {"train.lr": 5e-3} and trials[1].params != trials[0].params
    assert sorted(r.trial for r in Store(pg_url).list_runs(study="pg")) == [0, 1]
    best = studies.best_trial(studies.load("pg", pg_url))
    assert "registered pgmodel@1" in proc.stdout
    assert Store(pg_url).resolve_model("pgmodel@1").run_path == best.user_attrs["run_dir"]


def test_resume_refuses_fewer_trials_than_the_study_has(study, monkeypatch):
    monkeypatch.setenv("TUNERY_HOME", str(study["home"] / ".tunery"))
    proc = cli("tune", "--resume", STUDY, "--trials", "4", cwd=study["home"], expect=1)
    assert f"--trials 4: study '{STUDY}' already has 5 trials; give a larger total" in " ".join(proc.stderr.split())


def test_no_trial_starts_when_the_budget_is_spent_and_resume_asks_for_more_time(tmp_path, tiny_backbone):
    from optuna.trial import TrialState

    from tunery.config import load_config
    from tunery.errors import TuneryError
    from tunery.tune import resume_study, run_study
    from tunery.tune import study as studies

    cfg = load_config(_toy_config(tmp_path, tiny_backbone))
    times = iter([0.0])  # the study is created at 0 with 60 s; its workers look at the clock at 61
    result = run_study(cfg, budget_s=60, trials=3, study="spent", clock=lambda: next(times, 61.0))
    assert (result.complete, result.best_trial) == (0, None)
    assert [t.state for t in studies.load("spent").get_trials()] == [TrialState.WAITING] * 3
    with pytest.raises(TuneryError, match="out of time; give it more with --budget"):
        resume_study("spent", clock=lambda: 61.0)


@pytest.mark.parametrize("args, expected", [
    (["tune.yaml"], "give --budget (e.g. 30m), --trials N, or both"),
    (["tune.yaml", "--budget", "30x"], "budget '30x' is not a duration; write e.g. 30m"),
    (["tune.yaml", "--trials", "2", "--pruner", "asha"], "--pruner 'asha' is not one of median, sha, hyperband"),
    (["bad.yaml", "--trials", "2"], "bad.yaml: search: 'train.lrr' is not a setting that can be searched (did you "
                                    "mean 'train.lr'?)"),
    (["--join", "nosuch"], "no study named 'nosuch'"),
    (["--resume", "nosuch", "--trials", "3"], "no study named 'nosuch'"),
    (["tune.yaml", "--join", "x"], "--join uses the study's own config; drop CONFIG and --set"),
])
def test_tune_refuses_what_it_cannot_run_with_the_fix(tmp_path, tiny_backbone, args, expected):
    _toy_config(tmp_path, tiny_backbone)
    bad = yaml.safe_load((tmp_path / "tune.yaml").read_text())
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**bad, "search": {"train.lrr": {"log": [1e-4, 1e-3]}}}))
    proc = cli("tune", *args, cwd=tmp_path, expect=1)
    assert expected in " ".join(proc.stderr.split())

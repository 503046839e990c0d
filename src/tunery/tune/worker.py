"""Workers and the study's life: `run_study` creates a study and runs it with K local workers;
`join_study` adds workers (on this machine or another) to a study in progress; `resume_study`
continues a stopped one. Each worker starts one trial process at a time (trial.py) until the
study is done: its trials are all run, or the time left cannot fit another.

When the study is done: the runs of all trials but the best drop their weights (`keep: best`; their
metrics, config and report stay), the best run may be registered, and study.html is written."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tunery.config import RunConfig
from tunery.errors import ConfigError, TuneryError
from tunery.tune import budget, study as studies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyResult:
    study: str
    metric: str
    direction: str
    best_trial: int | None
    best_value: float | None
    best_run: Path | None
    best_params: dict = field(default_factory=dict)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    report: Path | None = None
    registered: str | None = None


def _threads(workers: int) -> int:
    """Torch threads per trial: the machine's cores shared between the workers, and no more than
    OMP_NUM_THREADS where it is set (the process was given a share of the machine)."""
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    given = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(given)) if given.isdigit() and int(given) > 0 else share


def work(study_name: str, *, url: str | None = None, threads: int | None = None, clock=time.time,
         stop: threading.Event | None = None) -> int:
    """Start trial processes one after another until the study is done; returns how many ran."""

    stop = stop or threading.Event()
    ran = 0
    while not stop.is_set():
        study = studies.load(study_name, url)
        studies.fail_stale(study)
        move = budget.next_move(studies.state(study), clock())
        if move == "done":
            break
        if move == "wait":  # a trial elsewhere may still die and be queued again
            stop.wait(studies.settings(study).get("heartbeat_s", studies.HEARTBEAT_S))
            continue
        cmd = [sys.executable, "-m", "tunery.tune.trial", study_name]
        if url:
            cmd += ["--url", url]
        if threads:
            cmd += ["--threads", str(threads)]
        returncode = _run_child(cmd, stop)
        if returncode == 3:  # another worker took the last queued trial
            continue
        ran += 1
        if returncode != 0:
            log.warning("a trial process of study %r ended with exit code %d; its trial is failed (and queued "
                        "again if it died or was interrupted)", study_name, returncode)
        study = studies.load(study_name, url)
        if studies.settings(study).get("keep") == "best":
            drop_weights(study)
        log.info("%s", progress_line(study))
    return ran


# The trial processes running now, so that an interrupted worker can pass the signal on to them.
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
# Seconds an interrupted trial process has to record its run and queue its trial again before it is killed.
CHILD_GRACE_S = 60.0


def _run_child(cmd: list[str], stop: threading.Event) -> int:
    """Run one trial process to its end; its exit code. Not started once `stop` is set."""
    with _CHILDREN_LOCK:
        if stop.is_set():
            return 3
        # a session of its own: a terminal's Ctrl-C reaches it once, passed on by `_stop_children`
        proc = subprocess.Popen(cmd, start_new_session=True)
        _CHILDREN.add(proc)
    try:
        return proc.wait()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)


def _pass_on(signum: int) -> list[subprocess.Popen]:
    """Send `signum` to the running trial processes; those it was sent to."""
    with _CHILDREN_LOCK:
        running = [p for p in _CHILDREN if p.poll() is None]
        for proc in running:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:  # it ended in between
                pass
    return running


def progress_line(study) -> str:
    """'study NAME: 5 trials finished (4 complete, 1 pruned, 0 failed), 2 to go; best accuracy 0.8912 (trial 3)'."""
    rows = studies.rows(study)
    count = {k: sum(r.state == k for r in rows) for k in ("complete", "pruned", "fail", "waiting", "running")}
    best = studies.best_trial(study)
    s = studies.settings(study)
    return (f"study {study.study_name}: {count['complete'] + count['pruned'] + count['fail']} trials finished "
            f"({count['complete']} complete, {count['pruned']} pruned, {count['fail']} failed), "
            f"{count['waiting'] + count['running']} to go"
            + (f"; best {s['metric']} {best.value:.4f} (trial {best.number})" if best else ""))


def _run_workers(study_name: str, workers: int, *, url: str | None, clock) -> None:
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    threads = _threads(workers)
    stop = threading.Event()
    pool = [threading.Thread(target=work, args=(study_name,), kwargs={"url": url, "threads": threads,
                                                                       "clock": clock, "stop": stop},
                             name=f"tunery-worker-{i}") for i in range(workers)]
    for t in pool:
        t.start()
    try:
        for t in pool:
            t.join()
    except BaseException as err:  # Ctrl-C or SIGTERM: no new trial starts, the running ones are interrupted
        stop.set()
        _stop_children(err)
        raise


def _stop_children(err: BaseException) -> None:
    """Interrupt the running trial processes as this one was (SIGTERM or SIGINT), and wait for them
    to record their runs and queue their trials again (CHILD_GRACE_S, then they are killed: the
    heartbeat fails their trials). Trial processes run in sessions of their own, so a Ctrl-C at the
    terminal reaches them only this way, once."""
    from tunery.interrupt import signal_for

    running = _pass_on(signal_for(err))
    deadline = time.monotonic() + CHILD_GRACE_S
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            log.warning("trial process %d did not stop within %.0f s of the signal: killed", proc.pid, CHILD_GRACE_S)
            proc.kill()
            proc.wait()


def drop_weights(study) -> list[str]:
    """Remove model/ from the runs of every finished trial except the best (their metrics, config,
    report and store record stay): disk does not grow with the number of trials."""
    from optuna.trial import TrialState

    from tunery.rundir import partial_dir

    best = studies.best_trial(study)
    out = Path(studies.settings(study)["output_dir"])
    dropped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if best is not None and t.number == best.number:
            continue
        run_dir = t.user_attrs.get("run_dir")
        heavy = [Path(run_dir) / "model"] if run_dir else []
        if t.state == TrialState.FAIL and t.user_attrs.get("run"):  # a failed or killed trial's training state
            unfinished = partial_dir(out / t.user_attrs["run"])
            heavy += [unfinished / "model", unfinished / "checkpoints"]
        for path in heavy:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                dropped.append(str(path))
    return dropped


def register_run(run_dir: Path, name: str, url: str | None = None) -> str | None:
    import json

    from tunery.store import Store

    doc = json.loads((run_dir / "metrics.json").read_text())
    verdict = doc.get("verdict")
    if verdict and not verdict.get("beats_baseline"):
        log.warning("not registering %s as %r: the best trial does not beat its baseline (%s)", run_dir.name, name,
                    verdict.get("summary"))
        return None
    version = (Store(url) if url else Store()).register_model(name, run_path=str(run_dir), run_name=run_dir.name, metrics=doc.get("model"),
                                     refuse_duplicate=True)
    return version.ref


def finish(study_name: str, *, url: str | None = None, register: str | None = None) -> StudyResult:
    """Keep the best run (dropping the others' weights with `keep: best`), register it when asked,
    write study.html; the study's result."""
    from optuna.trial import TrialState

    from tunery.tune.report import write_report

    study = studies.load(study_name, url)
    s = studies.settings(study)
    if s.get("keep") == "best":
        drop_weights(study)
    best = studies.best_trial(study)
    best_run = Path(best.user_attrs["run_dir"]) if best is not None and best.user_attrs.get("run_dir") else None
    registered = None
    register = register or s.get("register")
    if register and best_run is not None:
        registered = register_run(best_run, register, url)
    report = write_report(study, Path(s["output_dir"]) / "study.html")
    trials = study.get_trials(deepcopy=False)
    return StudyResult(
        study=study_name, metric=s["metric"], direction=s["direction"],
        best_trial=best.number if best else None, best_value=best.value if best else None, best_run=best_run,
        best_params=dict(best.params) if best else {},
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials), report=report, registered=registered)


def default_study_name(cfg: RunConfig) -> str:
    stem = Path(cfg.data.train).name.split(".")[0] or "study"
    return f"{cfg.name or stem}-tune-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def create_study(cfg: RunConfig, *, study: str | None = None, budget_s: float | None = None,
                 trials: int | None = None, pruner: str = "median", keep: str = "best", register: str | None = None,
                 url: str | None = None, heartbeat_s: int = studies.HEARTBEAT_S, clock=time.time) -> str:
    """Check the config, the search space and the data, then create the study and its queue; its name."""
    from tunery import pipeline
    from tunery.evaluate.metrics import default_metric, greater_is_better
    from tunery.tune import space

    if budget_s is None and trials is None:
        raise ConfigError("give --budget (e.g. 30m), --trials N, or both: a study needs an end")
    if pruner not in studies.PRUNERS:
        raise ConfigError(f"--pruner {pruner!r} is not one of {', '.join(studies.PRUNERS)}")
    if keep not in studies.KEEP:
        raise ConfigError(f"--keep {keep!r} is not one of {', '.join(studies.KEEP)}")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1")
    deadline = None if budget_s is None else clock() + budget_s  # the budget counts from here
    name = study or default_study_name(cfg)
    # Trials start from what the config itself sets and resolve the rest as `tunery train` does (the
    # backbone's lr, a multi-label head's lr from the trial's lr, ...).
    base = {**cfg.model_dump(mode="json", exclude_unset=True)}
    cfg = pipeline.resolve_defaults(cfg)
    search = cfg.search or space.default_search(cfg)
    base["search"] = search
    space.check_space(cfg, search)
    prepared = pipeline.prepare_run(cfg, quiet=True)  # the data is checked once, before any worker starts
    cfg = pipeline.resolve_task_defaults(cfg, prepared.data.task, len(prepared.data.train))
    metric = cfg.train.metric or default_metric(prepared.data.task)
    dists = space.distributions(search)
    output_dir = str((Path(cfg.output_dir) / name).resolve())
    studies.create(name, config=base, search=search, metric=metric,
                   direction="maximize" if greater_is_better(metric) else "minimize", pruner=pruner,
                   output_dir=output_dir, trials=trials,
                   deadline=deadline, keep=keep, register=register,
                   first_params=space.default_params(cfg, dists), url=url, heartbeat_s=heartbeat_s,
                   seed=cfg.train.seed, warmup_examples=len(prepared.data.train) + 1)  # none in epoch 1
    return name


def run_study(cfg: RunConfig, *, budget_s: float | None = None, trials: int | None = None, workers: int = 1,
              study: str | None = None, pruner: str = "median", keep: str = "best", register: str | None = None,
              url: str | None = None, heartbeat_s: int = studies.HEARTBEAT_S, clock=time.time) -> StudyResult:
    """Search `cfg`'s `search:` space (or the backbone's defaults) with `workers` local processes
    until `trials` trials are done or `budget_s` seconds have passed; the best run is kept.

    The first trial is the configured recipe itself, so the result is never worse than it."""
    name = create_study(cfg, study=study, budget_s=budget_s, trials=trials, pruner=pruner, keep=keep,
                        register=register, url=url, heartbeat_s=heartbeat_s, clock=clock)
    _run_workers(name, workers, url=url, clock=clock)
    return finish(name, url=url)


def join_study(study: str, *, workers: int = 1, url: str | None = None, clock=time.time) -> StudyResult:
    """Add `workers` local workers to a study in progress (from any machine that reaches its database)."""
    studies.load(study, url)  # a clear error when it does not exist
    _run_workers(study, workers, url=url, clock=clock)
    return finish(study, url=url)


def resume_study(study: str, *, budget_s: float | None = None, trials: int | None = None, workers: int = 1,
                 url: str | None = None, clock=time.time) -> StudyResult:
    """Continue a stopped study: its queued and interrupted trials run, `trials` raises its total,
    `budget_s` gives it a new deadline from now."""
    st = studies.load(study, url)
    s = studies.settings(st)
    changes = {}
    if budget_s is not None:
        changes["deadline"] = clock() + budget_s
    elif s.get("deadline") is not None and s["deadline"] <= clock():
        raise TuneryError(f"study {study!r} is out of time; give it more with --budget (e.g. 30m)")
    if trials is not None:
        if s.get("trials") is not None and trials < studies.counted(st):
            raise ConfigError(f"--trials {trials}: study {study!r} already has {studies.counted(st)} trials; "
                              "give a larger total")
        changes["trials"] = trials
        studies.add_slots(st, trials)
    if changes:
        studies.update_settings(st, **changes)
    _run_workers(study, workers, url=url, clock=clock)
    return finish(study, url=url)

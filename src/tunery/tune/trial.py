"""One trial = one real tunery run, in a process of its own (`python -m tunery.tune.trial STUDY`):
no memory grows across trials, and a trial that dies takes nothing else with it.

The process claims one queued trial (or, when the number of trials is not capped, queues and
claims a new one), keeps its heartbeat while it trains, reports the validation metric at every
evaluation so the pruner can stop it, stops in time for the study's deadline, and tells Optuna
how it ended. The run is recorded in the store with its study and trial number."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

from tunery.interrupt import Terminated, deferred, sigterm_as_interrupt
from tunery.train.callbacks import Callback

STARTED = time.time()  # this process's start: the shortest useful trial counts from here
log = logging.getLogger(__name__)


class TrialReport(Callback):
    """Reports the validation metric to the trial at every evaluation (the step is the number of
    training examples seen, comparable across batch sizes) and stops training when the pruner
    says so. `on_begin` runs once the run is recorded."""

    def __init__(self, trial, metric: str, *, on_begin=None, clock=time.time) -> None:
        self.trial = trial
        self.metric = metric
        self.on_begin = on_begin
        self.clock = clock
        self.first_eval_at: float | None = None
        self.train_end_at: float | None = None
        self.stop_reason = None

    def on_train_begin(self, state, n_train: int) -> None:
        if self.on_begin is not None:
            self.on_begin()

    def on_train_end(self, state) -> None:
        self.train_end_at = self.clock()

    def on_evaluate(self, state, record: dict) -> None:
        if self.first_eval_at is None:
            self.first_eval_at = self.clock()
        value = float(record[self.metric])
        with deferred():  # a signal waits for the write to end
            self.trial.report(value, step=int(state.samples_seen))
            prune = self.trial.should_prune()
        if prune:
            log.info("trial %d pruned at step %d (%s %.4f)", self.trial.number, state.step, self.metric, value)
            self.stop_reason = "pruned"


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds from a thread, while the trial runs."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tunery-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # noqa: BLE001 - a busy database: try again at the next beat
                log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, err)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def claim(study) -> tuple[int, int] | None:
    """(id, number) of a queued trial this process now owns (RUNNING), or None when the queue is
    empty. Claiming is one conditional update in the database (on SQLite under the write lock taken
    at BEGIN, study.py), so two workers never run the same trial."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    backend = study._storage  # noqa: SLF001 - Study holds its storage; Optuna's own queue pops it this way
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if backend.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):  # noqa: SLF001
                return t._trial_id, t.number  # noqa: SLF001
        except UpdateFinishedTrialError:
            continue
    return None


def _link(store, run: str, study: str, number: int, status: str | None = None) -> None:
    """Record the run's study and trial in the store."""
    fields = {"study": study, "trial": number, **({"status": status} if status else {})}
    try:
        with deferred():
            store.update_run(run, **fields)
    except Exception as err:  # noqa: BLE001 - the run's own record is written; the link is extra
        log.warning("could not link run %r to study %r trial %d in the store: %s", run, study, number, err)


def run_trial(study_name: str, *, url: str | None = None, threads: int | None = None, clock=time.time) -> int | None:
    """Run one trial of the study; returns its number, or None when there was none to run."""
    import optuna

    from tunery.store import Store
    from tunery.tune import study as studies

    study = studies.load(study_name, url)
    studies.fail_stale(study)  # dead trials elsewhere: failed and queued again
    s = studies.settings(study)
    claimed = claim(study)
    if claimed is None:
        if s.get("trials") is not None:
            return None
        study.enqueue_trial({})  # no cap: a new trial for this worker
        claimed = claim(study)
        if claimed is None:
            return None
    trial_id, number = claimed
    study = studies.load(study_name, url, trial_number=number)  # this trial's own sampler seed
    study.get_trials(deepcopy=False)  # fills the storage's cache, which writing the trial's parameters needs
    trial = optuna.Trial(study, trial_id)
    backend = study._storage  # noqa: SLF001
    with Heartbeat(backend, trial._trial_id, s.get("heartbeat_s", studies.HEARTBEAT_S)):  # noqa: SLF001
        name = f"{study_name}-t{trial.number:04d}"
        trial.set_user_attr("run", name)
        store = Store(url) if url else Store()
        try:
            run_dir, report, deadline = _train(trial, s, name, store, study_name, threads=threads, clock=clock)
        except BaseException as err:
            with deferred():  # a second signal does not stop the trial being told how it ended
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:1000])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                _link(store, name, study_name, trial.number)
                if not isinstance(err, Exception):
                    # Ctrl-C or SIGTERM: not the trial's fault; it is queued again for --resume
                    studies.requeue(study, study.trials[trial.number])
            if not isinstance(err, Exception):
                raise
            log.error("trial %d failed: %s", trial.number, err)
            return trial.number
        metrics = json.loads((run_dir / "metrics.json").read_text())
        value = metrics["training"]["best_validation"]
        finished = clock()
        trial.set_user_attr("run_dir", str(Path(run_dir).resolve()))
        if report.train_end_at is not None:  # the final evaluation, report and save
            trial.set_user_attr("finish_seconds", round(finished - report.train_end_at, 2))
        if report.first_eval_at is not None and report.train_end_at is not None:
            # the shortest useful trial: up to a first evaluation, then the final evaluation
            trial.set_user_attr("min_seconds", round(report.first_eval_at - STARTED + finished - report.train_end_at, 2))
        stopped_by = report.stop_reason or (deadline.stop_reason if deadline else None)
        if stopped_by:
            trial.set_user_attr("stopped_by", stopped_by)
        if report.stop_reason == "pruned":
            _link(store, name, study_name, trial.number, status="pruned")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            _link(store, name, study_name, trial.number)
            study.tell(trial, value)
        log.info("trial %d %s: %s %s (%.0f s)", trial.number, "pruned" if report.stop_reason == "pruned" else "done",
                 s["metric"], value, finished - STARTED)
    return trial.number


def _train(trial, s: dict, name: str, store, study_name: str, *, threads: int | None, clock):
    """The trial's config (the study's, with its parameters), trained as a run with the callbacks
    that report, prune and keep the deadline; returns the run directory and those callbacks."""
    from tunery import pipeline
    from tunery.config import config_from_dict
    from tunery.train.callbacks import Deadline, LoggingCallback
    from tunery.tune import budget, space

    base = config_from_dict(s["config"], source=f"study {study_name}")
    params = space.suggest(trial, space.distributions(s["search"]))
    cfg = space.apply(base, params, source=f"study {study_name} trial {trial.number}")
    train_update = {"progress": False}
    if threads and base.train.num_threads is None:  # the machine's cores, shared between its workers
        train_update["num_threads"] = threads
    cfg = cfg.model_copy(update={"name": name, "output_dir": s["output_dir"],
                                 "train": cfg.train.model_copy(update=train_update)})
    report = TrialReport(trial, s["metric"], clock=clock, on_begin=lambda: _link(store, name, study_name, trial.number))
    callbacks = [LoggingCallback(), report]
    deadline = None
    if s.get("deadline") is not None:
        deadline = Deadline(s["deadline"] - budget.WRAP_UP_S, reserve_s=budget.finish_reserve(
            [t.user_attrs["finish_seconds"] for t in trial.study.get_trials(deepcopy=False)
             if "finish_seconds" in t.user_attrs]), clock=clock)
        callbacks.append(deadline)
    log.info("trial %d: %s", trial.number, params)
    return pipeline.train(cfg, callbacks=callbacks, store=store), report, deadline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery.tune.trial", description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--url", default=None, help="database URL (default: the store's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for this trial")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("TUNERY_TUNE_VERBOSE") else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    sigterm_as_interrupt()  # the worker passes SIGTERM on: the run is recorded as interrupted, the trial queued again
    try:
        number = run_trial(args.study, url=args.url, threads=args.threads)
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    return 0 if number is not None else 3  # 3: nothing left to run


if __name__ == "__main__":
    raise SystemExit(main())

"""Studies in the store's database: Optuna's RDBStorage on the same URL (SQLite by default,
PostgreSQL through TUNERY_DB_URL), with heartbeats so that a trial whose process died is failed
and queued again with the same parameters.

The study, its settings (the config, the search space, the objective, the pruner, the budget)
and its queue of trials are all created by one process before any worker starts: Optuna's first
use of an empty database from several processes at once races on creating its tables."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.errors import ConfigError, TuneryError
from tunery.tune.budget import StudyState

log = logging.getLogger(__name__)

SETTINGS = "tunery"  # the study user attribute holding its settings
PRUNERS = ("median", "sha", "hyperband")
KEEP = ("best", "all")
HEARTBEAT_S = 10  # a dead trial is failed and retried after about 3 heartbeats


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_propagation()


def storage(url: str | None = None, *, heartbeat_s: int = HEARTBEAT_S):
    """Optuna's RDBStorage on the store's database URL, with heartbeats and retries of dead trials."""
    import warnings

    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from tunery.store import default_db_url

    _quiet_optuna()
    url = url or default_db_url()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}  # several workers write one file
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore")
        st = RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    if url.startswith("sqlite"):
        _serialise_sqlite(st.engine)
    return st


def _serialise_sqlite(engine) -> None:
    """Every Optuna transaction on SQLite begins with BEGIN IMMEDIATE (as the store's writes do).

    Optuna claims a queued trial by reading its state, then updating it: on SQLite, whose driver
    starts the transaction only at the update, two workers can both read WAITING and both run the
    trial. Taking the write lock at BEGIN makes the read and the update one step."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts transactions

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners: closed, new ones get them


def make_pruner(name: str, warmup_examples: int = 0):
    """Optuna's pruner called `name`. Steps are training examples seen; `warmup_examples` (one epoch)
    keeps the median pruner from stopping a trial on its first epoch, where a lower learning rate
    starts slower but may end better."""
    import optuna

    if name == "median":  # the default recipe and one more trial set the bar
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_examples)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise ConfigError(f"pruner {name!r} is not one of {', '.join(PRUNERS)}")


def make_sampler(seed: int | None = None):
    import optuna

    # constant_liar: parallel workers do not all sample next to the same running trial
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def names(url: str | None = None) -> list[str]:
    import optuna

    _quiet_optuna()
    return optuna.get_all_study_names(storage(url))


def load(name: str, url: str | None = None, *, heartbeat_s: int | None = None, trial_number: int | None = None):
    """The study called `name`, with its own pruner; TuneryError naming the studies there are.

    `trial_number`: the study as that trial's process sees it, its sampler seeded by the study's seed
    and the trial's number (every process starts a sampler of its own: with one seed for all, each
    would draw the same "random" parameters)."""
    import optuna

    st = storage(url, heartbeat_s=heartbeat_s or HEARTBEAT_S)
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        known = names(url)
        raise TuneryError(f"no study named {name!r} in the store ({_shown_url(st.url)}); studies there: "
                          f"{', '.join(known) or 'none'} (`tunery studies list`)") from None
    s = settings(study)
    if heartbeat_s is None and s.get("heartbeat_s", HEARTBEAT_S) != HEARTBEAT_S:
        return load(name, url, heartbeat_s=s["heartbeat_s"], trial_number=trial_number)
    seed = s.get("seed")
    if seed is not None and trial_number is not None:
        seed = (seed + 7919 * (trial_number + 1)) % 2**32
    return optuna.load_study(study_name=name, storage=st, pruner=make_pruner(s["pruner"], s.get("warmup_examples", 0)),
                             sampler=make_sampler(seed))


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def settings(study) -> dict[str, Any]:
    s = study.user_attrs.get(SETTINGS)
    if not isinstance(s, dict):
        raise TuneryError(f"study {study.study_name!r} was not created by tunery tune (it has no tunery settings)")
    return s


def create(name: str, *, config: dict, search: dict, metric: str, direction: str, pruner: str,
           output_dir: str, trials: int | None, deadline: float | None, keep: str, register: str | None,
           first_params: dict, url: str | None = None, heartbeat_s: int = HEARTBEAT_S, seed: int | None = None,
           warmup_examples: int = 0):
    """Create the study with its settings and queue: the default recipe first, then one empty slot
    per further trial when the number of trials is capped (each slot is claimed by exactly one
    worker, so the cap holds across processes and machines)."""
    import optuna

    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r} is not one of {', '.join(PRUNERS)}")
    if keep not in KEEP:
        raise ConfigError(f"--keep {keep!r} is not one of {', '.join(KEEP)}")
    st = storage(url, heartbeat_s=heartbeat_s)
    if name in names(url):
        raise TuneryError(f"a study named {name!r} already exists; continue it with `tunery tune --resume {name}`, "
                          f"join it with `tunery tune --join {name}`, or choose another --study name")
    study = optuna.create_study(study_name=name, storage=st, direction=direction,
                                pruner=make_pruner(pruner, warmup_examples),
                                sampler=make_sampler(seed))
    study.set_user_attr(SETTINGS, {
        "config": config, "search": search, "metric": metric, "direction": direction, "pruner": pruner,
        "output_dir": output_dir, "trials": trials, "deadline": deadline, "keep": keep, "register": register,
        "heartbeat_s": heartbeat_s, "seed": seed, "warmup_examples": warmup_examples, "created_at": time.time(),
    })
    study.enqueue_trial(first_params, user_attrs={"recipe": "default"})
    for _ in range((trials or 1) - 1):
        study.enqueue_trial({})
    return study


def update_settings(study, **changes) -> dict:
    s = {**settings(study), **changes}
    study.set_user_attr(SETTINGS, s)
    return s


def counted(study) -> int:
    """Trials that count towards --trials: every one except those failed and queued again."""
    from optuna.trial import TrialState

    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)} | {
        n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in study.get_trials(deepcopy=False)
               if not (t.state == TrialState.FAIL and t.number in retried))


def add_slots(study, total: int) -> int:
    """Queue empty trials until the study holds `total` counted trials; returns how many were added."""
    n = max(0, total - counted(study))
    for _ in range(n):
        study.enqueue_trial({})
    return n


def state(study) -> StudyState:
    from optuna.trial import TrialState

    s = settings(study)
    trials = study.get_trials(deepcopy=False)
    by = {st: [t for t in trials if t.state == st] for st in TrialState}
    mins = [t.user_attrs["min_seconds"] for t in trials if "min_seconds" in t.user_attrs]
    return StudyState(waiting=len(by[TrialState.WAITING]), running=len(by[TrialState.RUNNING]),
                      done=len(by[TrialState.COMPLETE]) + len(by[TrialState.PRUNED]) + len(by[TrialState.FAIL]),
                      cap=s.get("trials"), deadline=s.get("deadline"), min_trial_s=min(mins) if mins else None)


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict
    run: str | None
    run_dir: str | None
    seconds: float | None
    stopped_by: str | None
    retry_of: int | None


def rows(study) -> list[TrialRow]:
    out = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        out.append(TrialRow(t.number, t.state.name.lower(), t.value, dict(t.params), t.user_attrs.get("run"),
                            t.user_attrs.get("run_dir"), seconds, t.user_attrs.get("stopped_by"),
                            t.system_attrs.get("failed_trial")))
    return out


def best_trial(study):
    """The best complete trial, or None (pruned and failed trials never count)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    return max(done, key=lambda t: (sign * t.value, -t.number))  # a tie keeps the earlier trial


def fail_stale(study) -> None:
    """Fail the trials whose process stopped beating (killed, or its machine lost) and queue each
    again with the same parameters (the storage's retry callback)."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def requeue(study, trial) -> None:
    """Queue a trial again with its parameters, as a retry of it (an interrupted trial)."""
    import warnings

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore")
        RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)

"""`tunery auto`: the best model a time budget affords, from a labelled file alone.

One call reads and checks the data (the task and the columns inferred as `tunery train` infers
them), chooses the objective (accuracy, or macro-F1 when classes are imbalanced), fits the TF-IDF
baseline as a candidate run, chooses the largest installed backbone that the time left trains on
enough examples (probe.py's measured cost on this machine), searches the recipe with a
`tunery tune` study until the deadline, mixes the trials' weights into a greedy soup (classification:
soup.py; one model, kept only where validation does not drop), and keeps the candidate that is best
on validation: the soup, a trial's run or, when it beats every model, the baseline's (it serves at a
thousandth of the cost).
Every candidate is a real run directory; the leaderboard and the choice are written to
OUTPUT_DIR/NAME/auto.json.

The time rules: the budget counts from the call; the baseline, the probes and the study all spend
it; the study's deadline keeps WRAP_UP_S for what follows it (choosing, writing auto.json,
registering). The choice rules are plain functions (`choose_metric`, `choose_backbone`,
`choose_winner`), tested without training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from tunery.config import RunConfig
from tunery.errors import ConfigError, TuneryError

log = logging.getLogger(__name__)

# The default recipe's estimated time must fit the time left this many times over for a backbone
# to be chosen: a search needs several trials, not one.
FITS = 3.0
# Classes are "imbalanced" (the objective becomes macro-F1) when the largest has at least this many
# times the rows of the smallest: accuracy then rewards a model that ignores the small classes.
IMBALANCE_RATIO = 2.0
# Seconds kept after the study for choosing, auto.json and registering.
WRAP_UP_S = 5.0
# Time kept after the study for the soup of its trials (soup.py): this share of the budget, at least SOUP_MIN_S.
SOUP_SHARE, SOUP_MIN_S = 0.05, 15.0
# The fewest training examples a shortened run of a larger backbone must see for it to be chosen over a
# smaller one (or every row once, on smaller sets): `choose_backbone`.
MIN_SAMPLES = 2000
# Seconds a run spends besides its epochs and evaluations: a process starting, the backbone loading, saving.
RUN_START_S = 20.0
# Texts tokenised to estimate the training tokens (the mean length, times the rows).
TOKEN_SAMPLE = 2000
# The study's search space when the config has no `search:`: the recipe keys that move accuracy on a
# short budget (tune's default space less full-vs-LoRA and pooling: LoRA trades accuracy for memory,
# and the backbone's own pooling was chosen by measurement, docs/benchmarks.md "Mean pooling").
AUTO_SEARCH_KEYS = ("train.lr", "train.epochs", "train.warmup_ratio", "train.weight_decay", "train.batch_size",
                    "train.layer_lr_decay")
AUTO_FILE = "auto.json"
# When the default recipe's estimate does not fit the search's time, its epochs are scaled to fit this
# share of it (`fit_epochs`), never below MIN_EPOCHS.
BUDGET_MARGIN, MIN_EPOCHS = 0.8, 0.25


@dataclass(frozen=True)
class Candidate:
    """One row of the leaderboard: a study trial or the TF-IDF baseline."""

    name: str  # "trial 3" or "tfidf baseline"
    kind: str  # "model" or "baseline"
    backbone: str
    state: str  # complete, pruned, fail, ...
    validation: float | None
    seconds: float | None
    params: dict = field(default_factory=dict)
    run_dir: str | None = None


@dataclass(frozen=True)
class AutoResult:
    name: str
    task: str
    metric: str
    direction: str
    best_run: Path
    kind: str  # "model" or "baseline"
    best_validation: float | None
    backbone: str
    backbone_reason: str
    leaderboard: list[Candidate]
    test: dict | None  # the chosen run's metrics on the test split
    baseline_test: dict | None  # the TF-IDF baseline's, beside it
    study: str | None
    study_report: Path | None
    wall_seconds: float
    budget_seconds: float
    summary: Path
    registered: str | None = None


# -- choices: plain functions --------------------------------------------------------------------
def choose_metric(task: str, label_counts: list[int] | None = None, *, ratio: float = IMBALANCE_RATIO) -> str:
    """The objective: the task's default metric (accuracy, micro-F1, RMSE), except macro-F1 for
    classification whose largest class has `ratio` times the rows of its smallest, or more."""
    from tunery.evaluate.metrics import default_metric

    counts = [c for c in (label_counts or []) if c > 0]
    if task == "classification" and len(counts) >= 2 and max(counts) >= ratio * min(counts):
        return "macro_f1"
    return default_metric(task)


def choose_backbone(estimates: dict[str, float | None], time_left: float, *, n_train: int, epochs: float,
                    overheads: dict[str, float] | None = None, fits: float = FITS,
                    min_samples: int = MIN_SAMPLES) -> tuple[str, str]:
    """The largest backbone whose run, shortened to the time left where it must be (`fit_epochs`),
    still trains on `min_samples` examples (or on every one of the `n_train` rows once, on smaller
    sets); (alias, why). A larger pretrained model fine-tuned on fewer examples beats a smaller one
    fine-tuned on more (measured here: mpnet-base after 1,800 SST-2 examples 0.912 dev accuracy, the
    MiniLM after the same 0.818 and, searched for 15 minutes on 4,500, 0.856: docs/benchmarks.md).

    `estimates`: alias -> estimated seconds of one default run of `epochs` epochs over the `n_train`
    rows, smallest backbone first; None where it was not measured (not installed, or too large to be
    worth a probe). `overheads`: alias -> seconds a run spends besides its epochs (loading, the
    final evaluations). When the default run fits `fits` times, the search tries several recipes;
    else fewer, shorter ones. When none trains on enough examples, the smallest measured one."""
    measured = [(a, s) for a, s in estimates.items() if s is not None]
    if not measured:
        raise TuneryError("no backbone could be measured for `tunery auto`; check `tunery backbones`")
    need = min(min_samples, n_train)
    for alias, seconds in reversed(measured):
        overhead = (overheads or {}).get(alias, 0.0)
        usable = time_left - overhead
        if usable <= 0:
            continue
        if (seconds + overhead) * fits <= time_left:
            return alias, (f"{alias}: its default recipe takes about {_dur(seconds)} here, {time_left / seconds:.1f} "
                           f"times into the {_dur(time_left)} left (a search needs {fits:g})")
        share = min(1.0, usable * BUDGET_MARGIN / seconds)
        if n_train * epochs * share >= need:
            return alias, (f"{alias}: the largest that trains on {need:,} examples or more in the {_dur(time_left)} "
                           f"left (about {n_train * epochs * share:,.0f} of its default recipe's "
                           f"{n_train * epochs:,.0f}; a larger model trained shorter beats a smaller one trained "
                           "longer)")
    alias, seconds = measured[0]
    return alias, (f"{alias}: the smallest; its default recipe takes about {_dur(seconds)} here, and no backbone "
                   f"trains on {need:,} examples in the {_dur(time_left)} left (the deadline ends its trials early)")


def fit_epochs(epochs: float, estimate_s: float, time_s: float, *, margin: float = BUDGET_MARGIN) -> float | None:
    """The default recipe's epochs scaled so that one run fits `time_s` with `margin` to spare, when
    its estimated `estimate_s` does not: its learning-rate schedule then runs to its end instead of
    being cut mid-way (at a high rate) by the deadline. None when the recipe fits as it is."""
    if estimate_s <= time_s * margin:
        return None
    return max(MIN_EPOCHS, round(epochs * time_s * margin / estimate_s, 2))


def choose_winner(candidates: list[Candidate], direction: str) -> Candidate | None:
    """The candidate best on validation among the complete ones; a tie keeps the model (listed
    first) over the baseline, and the earlier trial over a later one."""
    done = [c for c in candidates if c.state == "complete" and c.validation is not None
            and not math.isnan(c.validation)]
    if not done:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(enumerate(done), key=lambda ic: (sign * ic[1].validation, -ic[0]))[1]


def _dur(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


# -- the steps -----------------------------------------------------------------------------------
def default_name(cfg: RunConfig) -> str:
    stem = Path(cfg.data.train).name.split(".")[0] or "data"
    return f"{cfg.name or stem}-auto-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _token_counts(frame, max_length: int, sample: int = TOKEN_SAMPLE) -> float:
    """Mean tokens per row (truncated at max_length) in a sample of `frame`, by the default
    backbone's tokenizer (BERT WordPiece; other backbones' tokenizers count within a few %)."""
    from tunery.backbones import resolve_backbone
    from tunery.pipeline import load_tokenizer

    if not len(frame):
        return 0.0
    rows = frame.sample(min(sample, len(frame)), random_state=0)
    tok = load_tokenizer(resolve_backbone("minilm-l6"))
    pairs = rows["text_pair"].astype(str).tolist() if "text_pair" in rows else None
    enc = tok(rows["text"].astype(str).tolist(), pairs, truncation=True, max_length=max_length)
    return sum(len(ids) for ids in enc["input_ids"]) / len(rows)


def backbone_estimates(aliases: list[str], n_train_tokens: float, n_eval_tokens: float, epochs: float,
                       time_left: float, *, n_train: int, min_samples: int = MIN_SAMPLES,
                       ) -> dict[str, float | None]:
    """Estimated seconds of one default run per installed alias (smallest first), from probe.py.
    A larger backbone is probed only when the smallest's estimate scaled by parameter count could
    train it on enough examples (`choose_backbone`): a probe of a 100M model costs half a minute that
    a short budget cannot spare."""
    from tunery.backbones import backbone_info, is_installed
    from tunery.probe import estimated_seconds

    infos = sorted((backbone_info(a) for a in aliases), key=lambda i: i.params_m)
    out: dict[str, float | None] = {}
    first: tuple[float, float] | None = None  # (params, seconds) of the smallest measured
    need = min(min_samples, n_train)
    for info in infos:
        if not is_installed(info.alias):
            out[info.alias] = None
            continue
        if first is not None:
            scaled = first[1] * info.params_m / first[0]
            if n_train * epochs * min(1.0, time_left * BUDGET_MARGIN / scaled) < need:
                out[info.alias] = None  # scaled by size it cannot train on enough examples: not worth probing
                continue
        seconds = estimated_seconds(info.alias, int(n_train_tokens), epochs, n_eval_tokens=int(n_eval_tokens))
        out[info.alias] = seconds
        if first is None:
            first = (info.params_m, seconds)
    return out


def run_overheads(aliases, n_eval_tokens: float, n_test_tokens: float) -> dict[str, float]:
    """Seconds a run of each measured alias spends besides its epochs: starting and loading
    (RUN_START_S), and the final evaluations on the validation and test splits (probe.py's cost)."""
    from tunery.probe import cached_cost

    out = {}
    for alias in aliases:
        cost = cached_cost(alias)
        infer = cost["infer_s_per_1k_tokens"] if cost else 0.0
        out[alias] = RUN_START_S + (n_eval_tokens + n_test_tokens) * infer / 1000.0
    return out


def auto_search(cfg: RunConfig) -> dict:
    from tunery.tune.space import default_search

    full = default_search(cfg)
    return {k: full[k] for k in AUTO_SEARCH_KEYS}


def _baseline_candidate(run: Path, metric: str) -> Candidate:
    doc = json.loads((run / "metrics.json").read_text())
    value = (doc.get("model") or {}).get("validation", {}).get(metric)
    return Candidate("tfidf baseline", "baseline", "tfidf", "complete", value,
                     doc.get("training", {}).get("wall_seconds"), {}, str(run))


def _trial_candidates(study_name: str, backbone: str, url: str | None) -> list[Candidate]:
    from tunery.tune import study as studies

    out = []
    for r in studies.rows(studies.load(study_name, url)):
        if r.state in ("waiting", "running"):
            continue
        out.append(Candidate(f"trial {r.number}", "model", backbone, r.state, r.value,
                             None if r.seconds is None else round(r.seconds, 1), r.params, r.run_dir))
    return out


def _test_metrics(run: Path) -> tuple[dict | None, dict | None]:
    doc = json.loads((run / "metrics.json").read_text())
    baseline = doc.get("baseline") or {}
    return (doc.get("model") or {}).get("test"), baseline.get("test")


def run_auto(cfg: RunConfig, *, budget_s: float, metric: str | None = None, workers: int = 1,
             trials: int | None = None, name: str | None = None, register: str | None = None,
             url: str | None = None, clock=time.time) -> AutoResult:
    """Search for the best model `budget_s` seconds afford on `cfg`'s data (see the module's doc).

    `cfg` gives the data (and any setting the user fixes: a backbone set in it is kept, `search:`
    replaces the default space); `metric` the objective (default: `choose_metric`); `trials` an
    optional cap on the study's trials. Returns the result; the chosen run is `best_run`."""
    from tunery import pipeline
    from tunery.backbones import list_backbones
    from tunery.evaluate.metrics import greater_is_better, metric_names
    from tunery.tune import run_study

    started = clock()
    deadline = started + budget_s
    if budget_s <= 0:
        raise ConfigError(f"budget {budget_s} s: give a positive budget, e.g. --budget 10m")
    name = name or default_name(cfg)
    root = Path(cfg.output_dir) / name
    if root.exists():
        raise TuneryError(f"{root} already exists; choose another --name or remove it")

    prepared = pipeline.prepare_data(cfg)  # read, checked and split once; errors before anything is written
    data = prepared.data
    if metric is None and cfg.train.metric is None:
        counts = data.train["label"].value_counts().tolist() if data.task == "classification" else None
        metric = choose_metric(data.task, counts)
    metric = metric or cfg.train.metric
    if metric not in metric_names(data.task) and not metric.startswith("per_class."):
        raise ConfigError(f"--metric {metric!r} is not a {data.task} metric; valid: "
                          f"{', '.join(metric_names(data.task))}")
    direction = "maximize" if greater_is_better(metric) else "minimize"
    cfg = cfg.model_copy(update={"output_dir": str(root), "train": cfg.train.model_copy(update={"metric": metric})})
    log.info("auto %s: %s task, %d/%d/%d rows, objective %s", name, data.task, len(data.train),
             len(data.validation), len(data.test), metric)

    # 1. the TF-IDF baseline: a candidate, fitted in seconds
    baseline_run = pipeline.train_baseline(cfg.model_copy(update={"name": f"{name}-tfidf"}))
    baseline = _baseline_candidate(baseline_run, metric)
    log.info("auto %s: TF-IDF baseline validation %s %s", name, metric, baseline.validation)

    # 2. the backbone the time left for the search affords
    soup_s = max(SOUP_MIN_S, SOUP_SHARE * budget_s) if data.task == "classification" else 0.0
    estimate, overhead = None, 0.0
    if "backbone" in cfg.model.model_fields_set:
        backbone, why = cfg.model.backbone, f"{cfg.model.backbone}: set in the config"
    else:
        per_row = _token_counts(data.train, cfg.data.max_length)
        estimates = backbone_estimates([b.alias for b in list_backbones()], per_row * len(data.train),
                                       per_row * len(data.validation), cfg.train.epochs,
                                       deadline - clock() - WRAP_UP_S - soup_s, n_train=len(data.train))
        overheads = run_overheads([a for a, s in estimates.items() if s is not None], per_row * len(data.validation),
                                  per_row * len(data.test))
        backbone, why = choose_backbone(estimates, deadline - clock() - WRAP_UP_S - soup_s, n_train=len(data.train),
                                        epochs=cfg.train.epochs, overheads=overheads)
        estimate, overhead = estimates[backbone], overheads[backbone]
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": backbone})})
    log.info("auto %s: backbone %s", name, why)

    # 3. the search, until the deadline less the wrap-up (and the soup's share, where one is made)
    study_name, study_report, trial_rows, soup = None, None, [], None
    left = deadline - clock() - WRAP_UP_S - soup_s
    if left > 0:
        if not cfg.search:
            cfg = cfg.model_copy(update={"search": auto_search(pipeline.resolve_defaults(cfg))})
            fitted = None if estimate is None or "epochs" in cfg.train.model_fields_set else fit_epochs(
                cfg.train.epochs, estimate, left - overhead)
            if fitted is not None:  # not even the default recipe fits: every trial's schedule is shortened
                why += (f"; the default recipe's {cfg.train.epochs:g} epochs do not fit the {_dur(left)} left for "
                        f"the search: trials train {fitted:g} epochs or fewer")
                log.info("auto %s: %g epochs fit the time left (the default recipe's %g do not)", name, fitted,
                         cfg.train.epochs)
                cfg = cfg.model_copy(update={
                    "train": cfg.train.model_copy(update={"epochs": fitted}),
                    "search": {**cfg.search, "train.epochs": {"float": [round(fitted / 2, 3), fitted]}}})
        study = run_study(cfg.model_copy(update={"output_dir": str(root.parent)}), budget_s=left, trials=trials,
                          workers=workers, study=name, keep="all" if soup_s else "best", url=url, clock=clock)
        study_name, study_report = study.study, study.report
        trial_rows = _trial_candidates(study.study, backbone, url)
        # 4. the greedy soup of the trials (classification), then the others' weights are dropped
        if soup_s:
            soup = _soup(trial_rows, name, root, direction, time_left=deadline - clock() - WRAP_UP_S)
            _drop_trial_weights(study.study, url)
    else:
        log.warning("auto %s: no time left for a search after the baseline and the probes", name)

    # 5. the winner on validation (the soup first: on a tie it is kept); the leaderboard
    candidates = [*filter(None, [soup]), *trial_rows, baseline]
    board = sorted(candidates, key=lambda c: _rank_key(c, direction))
    winner = choose_winner(candidates, direction) or baseline
    best_run = Path(winner.run_dir)
    test, baseline_test = _test_metrics(best_run)
    if winner.kind == "baseline":  # the run is the baseline
        baseline_test = test
    registered = None
    if register:  # a model that loses to its own baseline is refused (with a warning), as tune does
        from tunery.tune.worker import register_run

        registered = register_run(best_run, register, url)
    result = AutoResult(name=name, task=data.task, metric=metric, direction=direction, best_run=best_run,
                        kind=winner.kind, best_validation=winner.validation, backbone=backbone,
                        backbone_reason=why, leaderboard=board, test=test, baseline_test=baseline_test,
                        study=study_name, study_report=study_report, wall_seconds=round(clock() - started, 1),
                        budget_seconds=budget_s, summary=root / AUTO_FILE, registered=registered)
    _write_summary(result)
    return result


def _soup(trials: list[Candidate], name: str, root: Path, direction: str, *, time_left: float) -> Candidate | None:
    """The greedy soup of the complete trials (soup.py), as a candidate; None when fewer than two
    trials kept their weights, when no second trial improves on the first, or when time is short."""
    from tunery.soup import SOUP_MAX, soup_run

    sign = -1.0 if direction == "maximize" else 1.0
    ready = sorted((c for c in trials if c.state == "complete" and c.validation is not None and c.run_dir
                    and (Path(c.run_dir) / "model").is_dir()), key=lambda c: sign * c.validation)[:SOUP_MAX]
    if len(ready) < 2:
        return None
    if time_left < SOUP_MIN_S:
        log.warning("auto %s: no time left for a soup of the trials (%.0f s)", name, time_left)
        return None
    started = time.time()
    try:
        run, info = soup_run([c.run_dir for c in ready], name=f"{name}-soup", output_dir=root)
    except Exception as err:  # noqa: BLE001 - the trials stand without it
        log.warning("auto %s: no soup of the trials: %s", name, err)
        return None
    if run is None:
        log.info("auto %s: no trial improves the best one's validation score in a soup", name)
        return None
    numbers = [next(c.name for c in ready if Path(c.run_dir).name == m).split()[-1] for m in info["members"]]
    return Candidate(f"soup of trials {', '.join(numbers)}", "model", trials[0].backbone, "complete",
                     info["soup_validation"], round(time.time() - started, 1), {"members": info["members"]}, str(run))


def _drop_trial_weights(study_name: str, url: str | None) -> None:
    from tunery.tune import study as studies
    from tunery.tune.worker import drop_weights

    drop_weights(studies.load(study_name, url))  # all trials' but the best one's


def _rank_key(c: Candidate, direction: str) -> tuple:
    sign = -1.0 if direction == "maximize" else 1.0
    usable = c.state == "complete" and c.validation is not None
    return (0 if usable else 1, sign * c.validation if usable else 0.0, c.name)


def _write_summary(result: AutoResult) -> None:
    from tunery.rundir import write_text_atomic

    doc = asdict(result)
    for key in ("best_run", "study_report", "summary"):
        doc[key] = None if doc[key] is None else str(doc[key])
    result.summary.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(result.summary, json.dumps(doc, indent=1, default=str) + "\n")

"""tunery tune without a study: the `search:` section's checks, the default space and recipe, the
budget's rules on a controllable clock, and a deadline met inside training (a fake clock, no wall time)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_config
from tunery.config import config_from_dict
from tunery.errors import ConfigError


def _cfg(search=None, **train):
    return config_from_dict({"data": {"train": "reviews.csv"}, "train": train,
                             **({"search": search} if search is not None else {})})


@pytest.mark.parametrize("search, expected", [
    ({"train.lrr": {"log": [1e-5, 1e-3]}}, "'train.lrr' is not a setting that can be searched (did you mean 'train.lr'?)"),
    ({"train": {"choice": [1]}}, "'train' is not a setting that can be searched"),
    ({"name": {"choice": ["a", "b"]}}, "'name' is not a setting that can be searched"),
    ({"train.lr": {"lgo": [1e-5, 1e-3]}}, "train.lr: unknown kind 'lgo' (did you mean 'log'?); valid kinds: log, float, "
                                          "int, choice"),
    ({"train.lr": {"log": [1e-5, 1e-3], "float": [0, 1]}}, "train.lr: give exactly one of log: [low, high]"),
    ({"train.lr": {"log": [0, 1e-3]}}, "train.lr: log: [0, 0.001]: a log range must be above 0"),
    ({"train.lr": {"log": [1e-3, 1e-5]}}, "low must be below high"),
    ({"train.epochs": {"int": [1.5, 3]}}, "train.epochs: int takes [low, high] with whole numbers"),
    ({"train.batch_size": {"choice": []}}, "train.batch_size: choice takes a non-empty list"),
    ({"train.lr": {"float": "fast"}}, "train.lr: float takes [low, high]"),
])
def test_bad_search_specs_are_refused_with_the_fix(search, expected):
    with pytest.raises(ConfigError) as err:
        _cfg(search)
    assert expected in str(err.value)


def test_a_range_whose_end_is_not_a_valid_setting_is_refused_before_any_trial():
    from tunery.tune.space import check_space

    cfg = _cfg()
    with pytest.raises(ConfigError, match=r"search: train.batch_size: int: the value 0 is not a valid "
                                          r"train.batch_size .*greater than or equal to 1"):
        check_space(cfg, {"train.batch_size": {"int": [0, 8]}})
    with pytest.raises(ConfigError, match="the value 'adam' is not a valid train.scheduler"):
        check_space(cfg, {"train.scheduler": {"choice": ["linear", "adam"]}})
    check_space(cfg, {"train.batch_size": {"int": [8, 64]}, "model.lora.target_modules":
                      {"choice": [["query", "value"], ["query", "key", "value", "dense"]]}})


def test_any_key_is_searchable_and_a_trial_applies_its_parameters():
    from tunery.tune.space import apply, distributions

    cfg = _cfg({"model.lora.target_modules": {"choice": [["query", "value"], ["dense"]]},
                "evaluate.n_errors": {"int": [0, 5]}})
    dists = distributions(cfg.search)
    assert dists["model.lora.target_modules"].choices == ('["query", "value"]', '["dense"]')
    out = apply(cfg, {"model.lora.target_modules": '["dense"]', "evaluate.n_errors": 3, "train.lr": 2e-4})
    assert (out.model.lora.target_modules, out.evaluate.n_errors, out.train.lr) == (["dense"], 3, 2e-4)


def test_the_default_space_fits_the_backbone_and_the_first_trial_is_the_configured_recipe():
    from tunery.backbones import recommended_lr
    from tunery.pipeline import resolve_defaults
    from tunery.tune.space import default_params, default_search, distributions

    cfg = resolve_defaults(_cfg())
    space = default_search(cfg)
    low, high = space["train.lr"]["log"]
    assert low < recommended_lr("minilm-l6") < high
    assert {"train.epochs", "train.warmup_ratio", "train.weight_decay", "train.batch_size", "model.pooling",
            "model.method", "model.lora.r", "train.layer_lr_decay"} <= set(space)
    params = default_params(cfg, distributions(space))
    assert params == {"train.lr": cfg.train.lr, "train.epochs": 3, "train.warmup_ratio": 0.06,
                      "train.weight_decay": 0.01, "train.batch_size": 32, "model.pooling": "auto",
                      "model.method": "full", "model.lora.r": 8, "train.layer_lr_decay": 1.0}


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("2h", 7200), ("45", 45),
                                           (600, 600), ("1.5h", 5400)])
def test_budgets_read_as_durations(text, seconds):
    from tunery.tune.budget import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "0m", "-5m", "m30"])
def test_a_budget_that_is_not_a_duration_says_how_to_write_one(text):
    from tunery.tune.budget import parse_duration

    with pytest.raises(ConfigError, match="30m"):
        parse_duration(text)


def test_no_trial_starts_when_the_time_left_cannot_fit_one():
    from tunery.tune.budget import StudyState, next_move

    s = StudyState(waiting=0, running=1, done=3, cap=None, deadline=1000.0, min_trial_s=120.0)
    assert next_move(s, now=800.0) == "run"
    assert next_move(s, now=880.0) == "done"  # 120 s left: the shortest trial needs 120
    first = StudyState(waiting=1, running=0, done=0, cap=4, deadline=1000.0, min_trial_s=None)
    assert next_move(first, now=999.0) == "run" and next_move(first, now=1000.0) == "done"


def test_a_capped_study_runs_its_queue_then_waits_for_trials_that_may_be_retried():
    from tunery.tune.budget import StudyState, next_move

    assert next_move(StudyState(2, 1, 1, cap=4, deadline=None, min_trial_s=None), 0.0) == "run"
    assert next_move(StudyState(0, 1, 3, cap=4, deadline=None, min_trial_s=None), 0.0) == "wait"
    assert next_move(StudyState(0, 0, 4, cap=4, deadline=None, min_trial_s=None), 0.0) == "done"


def test_the_deadline_keeps_time_for_the_final_evaluation():
    from tunery.train.callbacks import Deadline
    from tunery.train.loop import TrainState

    state, now = TrainState(step=7, total_steps=48), [0.0]
    d = Deadline(100.0, reserve_s=10.0, eval_factor=3.0, clock=lambda: now[0])
    d.on_evaluate(None, {"eval_seconds": 5.0})
    assert d.reserve() == 25.0
    now[0] = 74.0
    d.on_step(state)
    assert d.stop_reason is None
    now[0] = 75.0
    d.on_step(state)
    assert d.stop_reason == "deadline"


class _Ticks:
    """A clock that advances one second each time it is read (once per optimizer step here)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.mark.parametrize("deadline, steps, best_step", [(6, 6, 6), (15, 15, 12)])
def test_a_run_that_hits_its_deadline_ends_at_its_best_checkpoint_and_is_evaluated(
        tmp_path, tiny_backbone, deadline, steps, best_step):
    """12 steps per epoch, evaluated at each epoch's end. Stopped at step 6, before any evaluation, the
    run evaluates once there; stopped at 15, it keeps the checkpoint of step 12 without evaluating again."""
    from tunery import pipeline
    from tunery.train.callbacks import Deadline

    cfg = run_config(tmp_path, tiny_backbone, f"deadline-{deadline}", epochs=4)
    cb = Deadline(float(deadline), eval_factor=0.0, clock=_Ticks())
    run = pipeline.train(cfg, callbacks=[cb])
    training = json.loads((run / "metrics.json").read_text())["training"]
    assert cb.stop_reason == "deadline"
    assert (training["steps"], training["total_steps"], training["best_step"]) == (steps, 48, best_step)
    evals = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "split" in r]
    assert evals == sorted({min(best_step, 12), best_step})
    assert (run / "tunery.json").exists() and (run / "model").is_dir()  # complete, and it has test metrics:
    assert "test" in json.loads((run / "metrics.json").read_text())["model"]


def test_a_trial_resolves_what_the_config_leaves_unset_from_its_own_parameters():
    """A multi-label head's lr follows the trial's lr, as `tunery train` would set it."""
    from tunery.pipeline import MULTILABEL_HEAD_LR_FACTOR, resolve_task_defaults
    from tunery.tune.space import apply

    trial = apply(_cfg(batch_size=16), {"train.lr": 2e-4})
    assert trial.train.model_fields_set == {"batch_size", "lr"}
    assert resolve_task_defaults(trial, "multilabel", 1000).train.head_lr == MULTILABEL_HEAD_LR_FACTOR * 2e-4


def test_a_trial_keeps_for_its_final_evaluation_what_earlier_trials_took():
    from tunery.tune.budget import FINISH_RESERVE_S, finish_reserve

    assert finish_reserve([]) == FINISH_RESERVE_S
    assert finish_reserve([4.0, 40.0]) == 50.0


def test_each_pruner_by_name_and_the_median_waits_out_the_first_epoch():
    import optuna

    from tunery.tune.study import make_pruner

    median = make_pruner("median", warmup_examples=193)
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_warmup_steps == 193
    assert isinstance(make_pruner("sha"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match="pruner 'asha' is not one of median, sha, hyperband"):
        make_pruner("asha")


def test_lora_defaults_to_ten_times_the_backbones_rate_and_a_set_rate_stays():
    from tunery.backbones import recommended_lr
    from tunery.config import config_from_dict
    from tunery.federated.run import resolve_federated
    from tunery.pipeline import LORA_LR_FACTOR, resolve_defaults

    def lr(tree):
        return resolve_defaults(config_from_dict({"data": {"train": "x.csv"}, **tree}, source="t")).train.lr

    assert lr({}) == recommended_lr("minilm-l6")
    assert lr({"model": {"method": "lora"}}) == LORA_LR_FACTOR * recommended_lr("minilm-l6") == 1e-3
    assert lr({"model": {"method": "lora"}, "train": {"lr": 2e-4}}) == 2e-4
    # a federation's LoRA updates get the LoRA rate (the method is settled before the rate), times the
    # clients trained per round, at most 8 (federated.run.lr_scale)
    def federated(fed, train=None):
        tree = {"data": {"train": "x.csv"}, "federated": fed, **({"train": train} if train else {})}
        return resolve_federated(config_from_dict(tree, source="t"))

    fed = federated({"clients": 3})
    assert fed.model.method == "lora" and fed.train.lr == pytest.approx(3e-3)
    assert fed.model.lora.target_modules == ["query", "value"]
    assert federated({"clients": 12}).train.lr == pytest.approx(8e-3)
    assert federated({"clients": 6, "fraction": 0.5, "min_clients": 2}).train.lr == pytest.approx(3e-3)
    assert federated({"clients": 6, "lr_scale": 1.5}).train.lr == pytest.approx(1.5e-3)
    assert federated({"clients": 3}, {"lr": 2e-4}).train.lr == 2e-4  # a set rate is never scaled
    assert federated({"clients": 3, "updates": "full"}).train.lr == recommended_lr("minilm-l6")

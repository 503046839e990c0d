"""Multi-label quality (issue 10): checkpoints are selected on thresholds tuned at every
evaluation, ties at a metric's floor break on the validation loss, rare labels get positive
weights, and per-label thresholds (tunery.json "thresholds") are used by predict, evaluate, the
Python API and tunery serve alike."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fast_train, make_dataset

LABELS = ["food", "sports", "tech"]


def _y(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(int)
    y[:12, 0] = 1  # at least 10 positives of each label: each gets its own threshold
    y[12:24, 1] = 1
    y[24:36, 2] = 1
    return y


# -- the selection logic, on scores made up for it ------------------------------------------------

def _select(scores_per_eval: list[np.ndarray], y: np.ndarray, task: str = "multilabel", metric: str = "micro_f1",
            *, tuned: bool = True) -> tuple[int, list[dict]]:
    """The index of the evaluation the trainer keeps, and its metrics, for these validation scores."""
    from tunery.pipeline import make_metric_fn, threshold_decision
    from tunery.train.loop import Trainer, TrainState

    decision = threshold_decision(task if tuned else "fixed", y, fixed=0.5, per_label=True)
    metric_fn = make_metric_fn(task, y, LABELS if task != "regression" else [], metric, decision)
    trainer = Trainer(None, None, None, n_labels=3, pad_id=0, workdir=Path("."), metric=metric,
                      greater_is_better=metric not in ("rmse", "mse", "mae"), metric_fn=metric_fn)
    state, records = TrainState(), []
    for i, scores in enumerate(scores_per_eval):
        m = metric_fn(scores)
        records.append(m)
        loss = m["loss"]
        if trainer._improved(float(m[metric]), state.best_metric, loss, state.best_loss):
            state.best_metric, state.best_step, state.best_loss = float(m[metric]), i, loss
    return state.best_step, records


def test_probabilities_below_half_still_select_the_best_checkpoint():
    """Every label's probability stays below 0.5 at every evaluation (BCE's early collapse towards
    the negatives): at a fixed 0.5 every evaluation scores F1 = 0 and the first one is kept; with
    thresholds tuned at each evaluation the separable one (the second) is kept."""
    y = _y()
    rng = np.random.default_rng(1)
    noise = rng.random(y.shape) * 0.2  # first evaluation: probabilities unrelated to the labels
    separable = 0.1 + 0.3 * y + rng.random(y.shape) * 0.05  # positives 0.4-0.45, negatives 0.1-0.15
    worse = 0.1 + 0.15 * y + rng.random(y.shape) * 0.2  # overlapping
    evals = [noise, separable, worse]
    assert max(float(s.max()) for s in evals) < 0.5
    fixed_best, fixed = _select(evals, y, tuned=False)
    assert [m["micro_f1"] for m in fixed] == [0.0, 0.0, 0.0]
    best, tuned = _select(evals, y)
    assert best == 1 and tuned[1]["micro_f1"] == pytest.approx(1.0)
    assert fixed_best == 1  # even untuned, the tie at 0 now breaks on the validation loss, not "first"


def test_a_metric_tied_at_its_floor_breaks_on_the_validation_loss():
    """A class never predicted (macro-F1 at its floor at every evaluation) and a regression R²
    below zero at every evaluation tie; the checkpoint kept is the one with the lowest loss."""
    y = np.array([0] * 6 + [1] * 6 + [2] * 6)

    def probs(p_true: float) -> np.ndarray:  # always predicts class 0 (accuracy ties), unsure to varying degrees
        s = np.full((len(y), 3), 0.05)
        s[:, 0] = 0.6
        s[y != 0, y[y != 0]] = p_true
        return s / s.sum(axis=1, keepdims=True)

    best, recs = _select([probs(0.1), probs(0.3), probs(0.2)], y, "classification", "accuracy")
    assert len({r["accuracy"] for r in recs}) == 1 and best == 1

    from tunery.pipeline import make_metric_fn, threshold_decision

    yr = np.linspace(0, 1, 20)
    fn = make_metric_fn("regression", yr, [], "r2", threshold_decision("regression", yr, fixed=0.5, per_label=False))
    assert fn(np.full(20, 3.0))["loss"] > fn(np.full(20, 2.0))["loss"]


def test_tuned_thresholds_are_per_label_only_with_enough_positives():
    from tunery.evaluate.metrics import tune_thresholds

    y = np.zeros((100, 2), dtype=int)
    y[:30, 0] = 1
    y[:3, 1] = 1  # 3 positives: too few for a threshold of its own
    p = np.full((100, 2), 0.05)
    p[:30, 0] = 0.85
    p[30:40, 0] = 0.6  # label 0: the best cut is above 0.6
    p[:3, 1] = 0.5
    glob, per = tune_thresholds(y, p)
    assert per[1] == glob and 0.6 < per[0] <= 0.85


def test_positive_weights_grow_with_rarity_and_are_clipped():
    from tunery.train.loop import label_pos_weight

    y = np.zeros((1000, 3))
    y[:500, 0] = 1  # balanced: 1
    y[:100, 1] = 1  # 9 negatives per positive: 3
    y[:1, 2] = 1  # 999: clipped
    np.testing.assert_allclose(label_pos_weight(y, 10.0), [1.0, 3.0, 10.0])


# -- one tiny end-to-end run, and its per-label thresholds through every consumer -------------------

@pytest.fixture(scope="module")
def tagged_run(tiny_backbone, tmp_path_factory) -> Path:
    from tunery.config import RunConfig
    from tunery.pipeline import train

    tmp = tmp_path_factory.mktemp("mlq")
    data = tmp / "tags.csv"
    make_dataset("multilabel", n=240).to_csv(data, index=False)
    cfg = RunConfig.model_validate({
        "name": "mlq-tags", "output_dir": str(tmp / "runs"),
        "data": {"train": str(data), "text_column": "text", "label_column": "tags"},
        "model": {"backbone": tiny_backbone}, "train": fast_train(epochs=2, eval_every_steps=4),
    })
    return train(cfg)


def test_a_run_selects_on_tuned_thresholds_and_records_how(tagged_run):
    m = json.loads((tagged_run / "metrics.json").read_text())
    meta = json.loads((tagged_run / "tunery.json").read_text())
    assert m["training"]["selection"] == {"metric": "micro_f1", "tie_break": "validation loss",
                                          "threshold": "tuned per evaluation"}
    assert len(meta["thresholds"]) == len(meta["label_names"]) == 3 and meta["thresholds"] == m["thresholds"]
    evals = [json.loads(line) for line in (tagged_run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r.get("split") == "validation"]
    assert len(evals) > 2 and all(math.isfinite(r["loss"]) for r in evals)
    best = max(evals, key=lambda r: (r["micro_f1"], -r["loss"]))
    assert m["training"]["best_step"] == best["step"]
    assert m["model"]["validation"]["threshold"] == meta["thresholds"]  # the final metrics use them too


@pytest.fixture(scope="module")
def forced_run(tagged_run, tmp_path_factory) -> Path:
    """The run with thresholds that make the decision visible: food never on, sports always on,
    tech at the global threshold."""
    run = tmp_path_factory.mktemp("forced") / "mlq-forced"
    shutil.copytree(tagged_run, run)
    meta = json.loads((run / "tunery.json").read_text())
    assert meta["label_names"] == LABELS
    meta["thresholds"] = [1.0, 0.0, meta["threshold"]]
    (run / "tunery.json").write_text(json.dumps(meta))
    return run


def _check(labels_per_row: list[list[str]]) -> None:
    assert labels_per_row and all("food" not in ls and "sports" in ls for ls in labels_per_row)


TEXTS = ["pizza goal laptop the film", "soup the plot story", "chip code match team"]


def test_predict_and_prediction_columns_use_per_label_thresholds(forced_run):
    from tunery.predict import load

    predictor = load(forced_run)
    _check([p["labels"] for p in predictor.predict(TEXTS)])
    cols = predictor.prediction_columns(predictor.predict_scores(TEXTS))
    _check([s.split("|") for s in cols["pred_labels"]])


def test_python_api_uses_per_label_thresholds(forced_run):
    from tunery.api import TextClassifier

    _check(TextClassifier.load(forced_run).predict(TEXTS))


def test_evaluate_uses_per_label_thresholds(forced_run, tmp_path):
    from tunery.pipeline import evaluate_run

    data = tmp_path / "eval.csv"
    make_dataset("multilabel", n=40, seed=7).to_csv(data, index=False)
    m = evaluate_run(forced_run, data=data)
    model = m["model"] if "model" in m else m
    pc = model["per_class"]
    assert model["threshold"][:2] == [1.0, 0.0]
    assert pc["food"]["recall"] == 0.0 and pc["sports"]["recall"] == 1.0


def test_serve_uses_per_label_thresholds(forced_run):
    import time

    from fastapi.testclient import TestClient

    from tunery.serve.app import create_app
    from tunery.serve.keys import create_key
    from tunery.store import Store

    store = Store()
    key, _ = create_key(store, tenant="acme", plan="pro")
    with TestClient(create_app({"tags": forced_run}, store=store)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        r = client.post("/v1/models/tags/predict", json={"texts": TEXTS}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    _check([p["labels"] for p in r.json()["predictions"]])


# -- losses -------------------------------------------------------------------------------------------

def test_multilabel_losses_focus_on_hard_cells_and_weigh_positives():
    import torch

    from tunery.train import losses
    from tunery.train.losses import multilabel_loss

    logits = torch.tensor([[4.0, -4.0, 0.0], [-6.0, 3.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert torch.isclose(multilabel_loss(logits, y, "bce"), bce)
    # focal and asl weigh the easy cells (confidently right) less than bce: smaller losses
    assert multilabel_loss(logits, y, "focal") < bce and multilabel_loss(logits, y, "asl") < bce
    # asl: a negative far below the margin gives exactly no loss; a confidently wrong one still does
    easy_neg = multilabel_loss(torch.tensor([[-6.0]]), torch.tensor([[0.0]]), "asl")
    assert easy_neg == 0
    assert multilabel_loss(torch.tensor([[3.0]]), torch.tensor([[0.0]]), "asl") > 0.5
    # pos_weight multiplies the positive term only
    w = torch.tensor([1.0, 1.0, 3.0])
    for kind in losses.MULTILABEL_LOSSES:
        assert multilabel_loss(logits, y, kind, pos_weight=w) > multilabel_loss(logits, y, kind)
        assert torch.isclose(multilabel_loss(logits[1:], y[1:], kind, pos_weight=w),
                             multilabel_loss(logits[1:], y[1:], kind))  # row 2 has no positives
    with pytest.raises(ValueError, match="not one of bce, focal, asl"):
        multilabel_loss(logits, y, "hinge")


def test_the_loss_is_a_validated_config_choice_recorded_in_the_run(tagged_run):
    from tunery.config import ConfigError, config_from_dict

    m = json.loads((tagged_run / "metrics.json").read_text())
    assert m["training"]["multilabel_loss"] == "bce"
    with pytest.raises(ConfigError, match="multilabel_loss"):
        config_from_dict({"data": {"train": "x.csv"}, "train": {"multilabel_loss": "hinge"}}, source="t")


# -- the report's per-label table --------------------------------------------------------------------

def test_report_per_label_table_puts_the_baseline_beside_the_model_and_names_unlearned_labels():
    from tunery.evaluate.report import _per_class_table

    model = {"per_class": {"food": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 40},
                           "sports": {"precision": 0.5, "recall": 0.6, "f1": 0.545, "support": 30},
                           "tech": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 5}}}
    base = {"per_class": {"food": {"precision": 0.7, "recall": 0.6, "f1": 0.646, "support": 40},
                          "sports": {"precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 30},
                          "tech": {"precision": 0.5, "recall": 0.2, "f1": 0.286, "support": 5}}}
    html = _per_class_table(model, base, LABELS, [0.4, 0.55, 0.5])
    for header in ("support", "precision", "recall", "threshold", "baseline precision", "baseline recall",
                   "baseline F1", "Δ F1"):
        assert f"<th>{header}</th>" in html
    assert ">0.5500<" in html  # sports' own threshold
    assert ">0.2000<" in html  # the baseline's recall on tech
    assert "does not learn tech" in html
    assert "The baseline does better on sports, tech" in html
    assert html.count('class="num worse"') == 2


def test_cli_evaluate_prints_each_label_beside_the_baseline(tagged_run):
    from tests.integration.helpers import cli

    res = cli("evaluate", str(tagged_run), cwd=tagged_run.parent)
    table = res.stdout[res.stdout.index("per label"):]
    for header in ("support", "precision", "recall", "baseline F1"):
        assert header in table
    for label in LABELS:
        assert label in table


def test_label_prior_bias_starts_each_label_at_its_weighted_frequency(tiny_backbone):
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunery.train.loop import label_prior_bias, set_head_bias

    y = np.zeros((100, 3))
    y[:50, 0] = 1
    y[:10, 1] = 1  # label 2 never occurs: its frequency is taken as 1 / (n + 1), not 0 (log 0)
    b = label_prior_bias(y)
    sig = 1 / (1 + np.exp(-b))
    np.testing.assert_allclose(sig[:2], [0.5, 0.1], atol=1e-9)
    assert 0 < sig[2] < 0.011
    # with positive weights, the constant that minimises the weighted loss: w p / (w p + 1 - p)
    bw = label_prior_bias(y, np.array([1.0, 3.0, 1.0]))
    assert np.isclose(1 / (1 + np.exp(-bw[1])), 0.3 / (0.3 + 0.9))

    from peft import LoraConfig, TaskType, get_peft_model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=3,
                                                               problem_type="multi_label_classification")
    assert set_head_bias(model, b) == 1
    np.testing.assert_allclose(model.classifier.bias.detach().numpy(), b, rtol=1e-6)
    lora = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"]))
    assert set_head_bias(lora, -b) == 2  # the frozen original and the trained copy alike
    with torch.no_grad():
        out = lora(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3)


def test_a_run_records_its_multilabel_training_choices(tagged_run):
    tr = json.loads((tagged_run / "metrics.json").read_text())["training"]
    assert tr["label_prior_bias"] is True and tr["multilabel_loss"] == "bce" and tr["pos_weight_max"] == 10.0


def test_multilabel_defaults_give_small_sets_more_steps_and_the_head_a_faster_rate():
    from tunery.config import config_from_dict
    from tunery.pipeline import (MULTILABEL_MAX_EPOCHS, MULTILABEL_MIN_STEPS, resolve_defaults,
                                 resolve_task_defaults)

    cfg = resolve_defaults(config_from_dict({"data": {"train": "x.csv"}}, source="t"))
    small = resolve_task_defaults(cfg, "multilabel", 2000)  # 63 steps an epoch
    assert small.train.epochs == min(MULTILABEL_MAX_EPOCHS, math.ceil(MULTILABEL_MIN_STEPS / 63))
    assert small.train.head_lr == 10 * cfg.train.lr
    big = resolve_task_defaults(cfg, "multilabel", 100_000)
    assert big.train.epochs == cfg.train.epochs and big.train.head_lr == 10 * cfg.train.lr
    # what the config sets itself stays, null included; other tasks are untouched
    mine = resolve_defaults(config_from_dict({"data": {"train": "x.csv"}, "train": {"epochs": 2, "head_lr": None}},
                                             source="t"))
    assert resolve_task_defaults(mine, "multilabel", 2000).train == mine.train
    assert resolve_task_defaults(cfg, "classification", 2000) is cfg

"""Training behaviours on the tiny backbone, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_config
from tunery import pipeline
from tunery.train.batching import batch_order


def test_batches_group_lengths_and_depend_only_on_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(2, 60, size=1000)
    a = batch_order(lengths, 16, seed=1, epoch=3, group_by_length=True)
    b = batch_order(lengths, 16, seed=1, epoch=3, group_by_length=True)
    assert all((x == y).all() for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    padded = sum(len(x) * lengths[x].max() for x in a)
    random_padded = sum(len(x) * lengths[x].max() for x in batch_order(lengths, 16, seed=1, epoch=3,
                                                                          group_by_length=False))
    assert padded < 0.7 * random_padded
    c = batch_order(lengths, 16, seed=1, epoch=4, group_by_length=True)
    assert any((x != y).any() if len(x) == len(y) else True for x, y in zip(a, c))


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_backbone):
    # A learning rate far too high wrecks the model after the first evals: training stops early and
    # the kept model is the best one seen, not the last.
    cfg = run_config(tmp_path, tiny_backbone, "early", epochs=30, lr=0.5, early_stopping_patience=2, eval_every_steps=3)
    run = pipeline.train(cfg)
    m = json.loads((run / "metrics.json").read_text())
    assert m["training"]["stopped_early"] and m["training"]["steps"] < m["training"]["total_steps"]
    assert m["model"]["validation"]["accuracy"] == pytest.approx(m["training"]["best_validation"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("split") == "validation"]
    assert max(r["accuracy"] for r in evals) == pytest.approx(m["training"]["best_validation"])
    assert all({"step", "loss", "lr", "samples_per_s"} <= set(r) for r in log if "split" not in r)


def test_lora_run_saves_a_plain_loadable_model(tmp_path, tiny_backbone):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    run = pipeline.train(run_config(tmp_path, tiny_backbone, "lora", model={"method": "lora", "lora": {"r": 4}},
                              epochs=3, lr=2e-2))
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert not any("lora" in k for k in model.state_dict())
    # The adapters were merged: the attention weights moved away from the backbone's ...
    base = load_file(f"{tiny_backbone}/model.safetensors")
    key = next(k for k in base if k.endswith("attention.self.query.weight"))
    assert not (model.state_dict()["bert." + key.removeprefix("bert.")] == base[key]).all()
    # ... and the plain model reproduces the metrics measured on the PEFT model during the run.
    m = json.loads((run / "metrics.json").read_text())
    again = pipeline.evaluate_run(run)
    assert again["model"]["accuracy"] == pytest.approx(m["model"]["test"]["accuracy"])
    assert again["model"]["log_loss"] == pytest.approx(m["model"]["test"]["log_loss"], rel=1e-4)


def test_training_is_reproducible_with_a_seed(tmp_path, tiny_backbone):
    a = pipeline.train(run_config(tmp_path, tiny_backbone, "a", epochs=2))
    b = pipeline.train(run_config(tmp_path, tiny_backbone, "b", epochs=2))
    ma, mb = (json.loads((r / "metrics.json").read_text())["model"] for r in (a, b))
    assert ma == mb


def test_gradient_accumulation_and_cosine_schedule_run(tmp_path, tiny_backbone):
    run = pipeline.train(run_config(tmp_path, tiny_backbone, "accum", epochs=12, grad_accum_steps=2,
                              scheduler="cosine", batch_size=8, precision="bf16"))
    m = json.loads((run / "metrics.json").read_text())
    assert m["training"]["precision"] == "bf16"
    assert m["training"]["steps"] == m["training"]["total_steps"] == 12 * int(np.ceil(np.ceil(192 / 8) / 2))
    assert m["model"]["test"]["accuracy"] >= 0.8


def test_existing_run_name_is_refused(tmp_path, tiny_backbone):
    from tunery.errors import RunError

    pipeline.train(run_config(tmp_path, tiny_backbone, "same", epochs=1))
    with pytest.raises(RunError, match="already exists"):
        pipeline.train(run_config(tmp_path, tiny_backbone, "same", epochs=1))


def test_accumulated_batches_step_like_one_big_batch(tmp_path):
    """8 x 2 accumulated micro-batches give the update of one batch of 16 (no dropout, same rows)."""
    from safetensors.torch import load_file

    from tunery.testing import tiny_backbone

    backbone = tiny_backbone(tmp_path / "no-dropout", dropout=0.0)
    common = dict(max_steps=3, group_by_length=False, lr=1e-2, warmup_ratio=0.0, scheduler="constant")
    big = pipeline.train(run_config(tmp_path, backbone, "big", model={"classifier_dropout": 0.0}, batch_size=16, **common))
    acc = pipeline.train(run_config(tmp_path, backbone, "acc", model={"classifier_dropout": 0.0}, batch_size=8,
                              grad_accum_steps=2, **common))
    a, b = (load_file(r / "model" / "model.safetensors") for r in (big, acc))
    base = load_file(f"{backbone}/model.safetensors")
    moved = max(float((a[f"bert.{k}"] - base[k]).abs().max()) for k in base if f"bert.{k}" in a)
    assert moved > 1e-3
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-5), k


def test_unknown_selection_metric_fails_before_anything_is_written(tmp_path, tiny_backbone):
    from tunery.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        pipeline.train(run_config(tmp_path, tiny_backbone, "typo", metric="acuracy"))
    assert not (tmp_path / "runs").exists()


def test_max_length_beyond_the_backbone_fails_before_training(tmp_path, tiny_backbone):
    from tunery.errors import ConfigError

    cfg = run_config(tmp_path, tiny_backbone, "long")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": 512})})
    with pytest.raises(ConfigError, match="data.max_length 512"):
        pipeline.train(cfg)
    assert not (tmp_path / "runs").exists()


def test_layer_wise_lr_decay_gives_lower_layers_smaller_rates(tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    from tunery.config import TrainConfig
    from tunery.train.loop import _param_groups

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2)
    groups = _param_groups(model, TrainConfig(lr=1e-3, layer_lr_decay=0.5))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # 2 layers: embeddings at lr * 0.5**3, layer 0 at 0.5**2, layer 1 at 0.5, the head at lr
    assert lr_of[id(named["bert.embeddings.position_embeddings.weight"])] == pytest.approx(1e-3 * 0.125)
    assert lr_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1e-3)

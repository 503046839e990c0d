"""Mean pooling for sentence-transformers backbones, as one more plain BERT layer (pooling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import make_dataset, run_config
from tunery import pipeline
from tunery.pooling import add_mean_pooling_layer, pretrained_pooling, resolve_pooling


def _model(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()


def test_the_added_layer_starts_as_mean_pooling_over_the_unpadded_tokens(tiny_backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    model = _model(tiny_backbone)
    texts = ["a wonderful film", "the plot was dreadful and the acting was boring too"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = torch.nn.functional.layer_norm((states * mask).sum(1) / mask.sum(1), (states.shape[-1],))
        add_mean_pooling_layer(model)
        pooled = model.bert(**batch).last_hidden_state[:, 0]
        alone = model.bert(**tok(texts[:1], return_tensors="pt")).last_hidden_state[:, 0]
    assert model.config.num_hidden_layers == 3 and len(model.bert.encoder.layer) == 3
    assert torch.nn.functional.cosine_similarity(pooled, mean).min() > 0.98
    # padding does not count: the short text gives the same state alone as padded in the batch
    assert torch.allclose(pooled[0], alone[0], atol=1e-5)


def test_auto_uses_mean_pooling_only_for_backbones_pretrained_with_it(tiny_backbone, st_backbone):
    st = st_backbone
    assert pretrained_pooling(st) == "mean"
    assert pretrained_pooling(tiny_backbone) == "cls"
    assert resolve_pooling(st, "auto", _model(st)) == "mean"
    assert resolve_pooling(tiny_backbone, "auto", _model(tiny_backbone)) == "cls"
    assert resolve_pooling(st, "cls", _model(st)) == "cls"


def test_mean_pooling_on_a_model_without_bert_layers_names_the_fix():
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, XLMRobertaXLConfig,
                              XLMRobertaXLForSequenceClassification)

    from tunery.errors import ConfigError

    distilbert = DistilBertForSequenceClassification(DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2))
    # pre-LayerNorm BERT variants have the attention names but not the norms the initialisation needs
    pre_ln = XLMRobertaXLForSequenceClassification(XLMRobertaXLConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    for model in (distilbert, pre_ln):
        assert resolve_pooling("/nowhere", "auto", model) == "cls"
        with pytest.raises(ConfigError, match="model.pooling: cls"):
            resolve_pooling("/nowhere", "mean", model)


def test_a_mean_pooled_run_learns_and_saves_a_plain_model_with_one_more_layer(st_backbone, tmp_path):
    from transformers import AutoModelForSequenceClassification

    import tunery

    st = st_backbone
    run = pipeline.train(run_config(tmp_path, st, "mean"))
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"]["test"]["accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_hidden_layers == 3 and m["training"]["pooling"] == "mean"
    # the plain model reproduces the run's own test metrics
    again = pipeline.evaluate_run(run)
    assert again["model"]["accuracy"] == pytest.approx(m["model"]["test"]["accuracy"])
    assert again["model"]["log_loss"] == pytest.approx(m["model"]["test"]["log_loss"], rel=1e-4)
    # tunery.load predicts with the same 3-layer model as plain transformers
    from transformers import AutoTokenizer

    texts = make_dataset("binary", n=16)["review"].tolist()
    with torch.no_grad():
        probs = torch.softmax(model.eval()(**AutoTokenizer.from_pretrained(run / "model")(
            texts, padding=True, return_tensors="pt")).logits, -1).numpy()
    predicted = tunery.load(run).predict(texts)
    assert [p["label"] for p in predicted] == [model.config.id2label[i] for i in probs.argmax(1)]
    assert np.allclose([p["score"] for p in predicted], probs.max(1), atol=1e-4)
    # auto is recorded as what it chose, so a resume rebuilds the same model whatever the hub cache holds
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["pooling"] == "mean"

    # Continuing from the run (its model is the backbone now) never stacks a second pooling layer.
    for pooling in ("auto", "mean"):
        again = run_config(tmp_path, str(run), f"more-{pooling}", model={"pooling": pooling})
        model = pipeline.preflight(pipeline.prepare_run(again))
        assert model.config.num_hidden_layers == 3, pooling


def test_layer_wise_lr_decay_skips_the_added_pooling_layer(st_backbone):
    from tunery.config import TrainConfig
    from tunery.train.loop import _param_groups

    model = _model(st_backbone)
    add_mean_pooling_layer(model)
    groups = _param_groups(model, TrainConfig(lr=1e-3, layer_lr_decay=0.5))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # as without the added layer: layer 1 (the backbone's top) at lr * 0.5; the pooling layer at lr
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(named["bert.encoder.layer.2.attention.self.query.weight"])] == pytest.approx(1e-3)

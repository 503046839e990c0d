"""model.freeze_layers: the embeddings and the lowest K encoder layers stay as pretrained, the rest
trains; impossible settings name the fix."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_config
from tunery import pipeline
from tunery.errors import ConfigError


def test_the_lowest_layers_and_the_embeddings_stay_as_pretrained(tiny_backbone, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    run = pipeline.train(run_config(tmp_path, tiny_backbone, "frozen1", model={"freeze_layers": 1}, epochs=2))
    trained = load_file(run / "model" / "model.safetensors")
    start = AutoModelForSequenceClassification.from_pretrained(tiny_backbone).state_dict()

    def moved(prefix: str) -> float:
        return max(float((trained[k] - start[k]).abs().max()) for k in start if k.startswith(prefix))

    assert moved("bert.embeddings.") == 0.0
    assert moved("bert.encoder.layer.0.") == 0.0
    assert moved("bert.encoder.layer.1.") > 1e-3  # the layer above trains, and so does the head
    assert moved("classifier.") > 1e-3


def test_the_frozen_layers_get_no_gradient(tiny_backbone, tmp_path):
    from tunery.tasks import get_task

    cfg = run_config(tmp_path, tiny_backbone, "g", model={"freeze_layers": 1})
    model = pipeline.build_model(tiny_backbone, get_task("classification"), ["neg", "pos"], cfg)
    ids = torch.tensor([[101, 2000, 2001, 102]])
    model(input_ids=ids, labels=torch.tensor([1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in with_grad)


@pytest.mark.parametrize("model,message", [
    ({"freeze_layers": 2}, "every one of the model's 2 encoder layers; choose at most 1"),
    ({"freeze_layers": 1, "method": "lora"}, "applies to full fine-tuning"),
])
def test_impossible_settings_name_the_fix(tiny_backbone, tmp_path, model, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.train(run_config(tmp_path, tiny_backbone, "bad", model=model))


def test_a_negative_count_is_refused_by_the_config(tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="freeze_layers"):
        run_config(tmp_path, tiny_backbone, "neg", model={"freeze_layers": -1})

"""The encoder layers of a transformers sequence classifier, for the parts that reshape or freeze them
(the mean-pooling layer, a distilled student, the [CLS]-only last layer, model.freeze_layers)."""

from __future__ import annotations

import torch

from tunery.errors import ConfigError


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """`model.base_model.encoder.layer` (BERT, RoBERTa, ELECTRA, MPNet and their kin), or None for
    another layout."""
    return getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)


def freeze_lower_layers(model: torch.nn.Module, k: int, *, lora: bool = False) -> None:
    """Fix the embeddings and the lowest `k` encoder layers of `model` (model.freeze_layers): nothing
    below layer k needs a gradient, so the backward pass stops there. At least one layer (the
    mean-pooling layer counts) must stay trainable."""
    if lora:
        raise ConfigError(f"model.freeze_layers: {k} applies to full fine-tuning; LoRA (model.method: lora) "
                          "already trains only its adapters. Set model.freeze_layers: 0 or model.method: full")
    layers = encoder_layers(model)
    embeddings = getattr(model.base_model, "embeddings", None)
    if layers is None or embeddings is None:
        raise ConfigError(f"model.freeze_layers: {k}: {type(model).__name__} has no encoder layers tunery "
                          "knows how to freeze (the BERT layout: BERT, RoBERTa, MPNet); set model.freeze_layers: 0")
    if k >= len(layers):
        raise ConfigError(f"model.freeze_layers: {k} would freeze every one of the model's {len(layers)} "
                          f"encoder layers; choose at most {len(layers) - 1}")
    embeddings.requires_grad_(False)
    for layer in layers[:k]:
        layer.requires_grad_(False)

"""Mean pooling for backbones pretrained with it, in a model that stays plain-loadable.

Sentence-transformers checkpoints (all-MiniLM-L6-v2 among them) were trained so that the *mean* of
their last hidden states is the sentence's meaning; their [CLS] state and pooler were never trained
for it (all-MiniLM-L6-v2's pooler bias is still exactly zero). `AutoModelForSequenceClassification`
classifies from [CLS]. So a classifier fine-tuned from such a backbone first has to teach the last
layer to gather the sentence into [CLS].

`add_mean_pooling_layer` appends one more transformer layer, initialised so that its [CLS] output is
(to within 1/`scale`) the layer-normalised mean of the previous layer's states over the text's
tokens, the backbone's own sentence embedding:
- query weights zero: every attention score is equal, so attention is a uniform average over the
  unpadded tokens, as sentence-transformers' mean pooling;
- value weights the identity, the attention output `scale` x identity: the average dominates the
  residual [CLS] state before the layer norm;
- feed-forward output zero: the block passes its input through.
The layer trains with the rest, so it can learn attention pooling from there. The model is a plain
BERT with one more layer (`num_hidden_layers` + 1) that `from_pretrained` loads as is; it costs one
layer's compute more (about 1/6 more for a 6-layer backbone).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tunery.errors import ConfigError

MEAN_POOLING_SCALE = 8.0


def _pooling_config(backbone: str) -> Path | None:
    """The sentence-transformers pooling config of a local directory or hub id, if it has one."""
    local = Path(backbone) / "1_Pooling" / "config.json"
    if local.is_file() or Path(backbone).is_dir():
        return local if local.is_file() else None
    try:  # a hub id that resolved (online or cached): the cache first, the hub only if unknown there
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(backbone, "1_Pooling/config.json")
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None:  # cached as absent
            return None
        return Path(hf_hub_download(backbone, "1_Pooling/config.json"))
    except Exception:  # noqa: BLE001 - not a sentence-transformers repo, or offline: no mean pooling
        return None


def pretrained_pooling(backbone: str) -> str:
    """'mean' for a sentence-transformers checkpoint (directory or hub id) that pools by mean, else
    'cls'."""
    cfg = _pooling_config(backbone)
    try:
        modes = json.loads(cfg.read_text(encoding="utf-8")) if cfg else {}
    except (OSError, ValueError):
        return "cls"
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls"


def supports_mean_pooling_layer(model) -> bool:
    """True for BERT-style post-LayerNorm encoders (BERT, RoBERTa, XLM-R, ELECTRA, ...), whose layers
    have attention.self.{query,key,value}, attention.output and output blocks with their LayerNorms."""
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    if not layers:
        return False
    last = layers[-1]
    # post-LayerNorm blocks only: pre-LN variants (XLM-RoBERTa-XL, Megatron-BERT) lack these norms,
    # and the initialisation below relies on them
    return all(hasattr(last, a) for a in ("attention", "intermediate", "output")) and all(
        hasattr(last.attention, a) for a in ("self", "output")
    ) and hasattr(last.attention.self, "query") and hasattr(last.attention.output, "LayerNorm") and hasattr(
        last.output, "LayerNorm")


def add_mean_pooling_layer(model, scale: float = MEAN_POOLING_SCALE) -> None:
    """Append the mean-pooling layer described above to `model` in place (and to its config)."""
    if not supports_mean_pooling_layer(model):
        raise ValueError(f"{type(model).__name__} is not a BERT-style encoder; use model.pooling: cls")
    encoder = model.base_model.encoder
    layer = copy.deepcopy(encoder.layer[-1])
    hidden = model.config.hidden_size
    eye = torch.eye(hidden)
    with torch.no_grad():
        attn = layer.attention.self
        attn.query.weight.zero_()
        attn.query.bias.zero_()
        attn.value.weight.copy_(eye)
        attn.value.bias.zero_()
        out = layer.attention.output
        out.dense.weight.copy_(scale * eye)
        out.dense.bias.zero_()
        for norm in (out.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        layer.output.dense.weight.zero_()
        layer.output.dense.bias.zero_()
    index = len(encoder.layer)
    for module in layer.modules():  # the copy keeps its source's index, used by caches only
        if hasattr(module, "layer_idx"):
            module.layer_idx = index
    encoder.layer.append(layer)
    model.config.num_hidden_layers = index + 1
    model.config.tunery_pooling = "mean"  # recorded in the saved config.json; from_pretrained ignores it


def model_pooling(model) -> str:
    """'mean' for a model that got the mean-pooling layer here, else 'cls'."""
    config = getattr(model, "config", None)
    return getattr(config, "tunery_pooling", "cls") or "cls"


def resolve_pooling(backbone_path: str, pooling: str, model) -> str:
    """The pooling a run uses: `model.pooling`, with 'auto' meaning the backbone's pretraining
    pooling where the model supports it. An explicit 'mean' on a model that cannot is an error."""
    if pooling == "auto":
        return "mean" if supports_mean_pooling_layer(model) and pretrained_pooling(backbone_path) == "mean" else "cls"
    if pooling == "mean" and not supports_mean_pooling_layer(model):
        raise ConfigError(f"model.pooling: mean needs a BERT-style encoder; {type(model).__name__} is not one "
                          "(set model.pooling: cls)")
    return pooling

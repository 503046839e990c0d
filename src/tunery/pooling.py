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
BERT (or MPNet) with one more layer (`num_hidden_layers` + 1) that `from_pretrained` loads as is; it
costs one layer's compute more (about 1/6 more for a 6-layer backbone, 1/12 for a 12-layer one).
On MPNet the start is close to the mean but not exact: see `add_mean_pooling_layer`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tunery.errors import ConfigError
from tunery.layers import encoder_layers

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


def _layer_parts(layer) -> dict | None:
    """The parts of a post-LayerNorm transformer layer that the construction sets, by role, for the
    layer layouts it knows: BERT's (BERT, RoBERTa, XLM-R, ELECTRA, ...: attention.self.{query,value},
    attention.output.{dense,LayerNorm}) and MPNet's (attention.attn.{q,v,o}, attention.LayerNorm);
    both with output.{dense,LayerNorm} after the feed-forward block. None for any other layout:
    pre-LayerNorm variants (XLM-RoBERTa-XL, Megatron-BERT) lack these norms, and the
    initialisation relies on them."""
    att, out = getattr(layer, "attention", None), getattr(layer, "output", None)
    if att is None or out is None or not hasattr(layer, "intermediate") or not hasattr(out, "LayerNorm"):
        return None
    ffn = {"ffn_out": out.dense, "ffn_norm": out.LayerNorm}
    self_att, att_out = getattr(att, "self", None), getattr(att, "output", None)
    if hasattr(self_att, "query") and hasattr(att_out, "LayerNorm"):  # BERT family
        return {"query": self_att.query, "value": self_att.value, "attn_out": att_out.dense,
                "attn_norm": att_out.LayerNorm, **ffn}
    mp = getattr(att, "attn", None)
    if hasattr(mp, "q") and hasattr(mp, "o") and hasattr(att, "LayerNorm"):  # MPNet
        return {"query": mp.q, "value": mp.v, "attn_out": mp.o, "attn_norm": att.LayerNorm, **ffn}
    return None


def supports_mean_pooling_layer(model) -> bool:
    """True for post-LayerNorm encoders whose layers `_layer_parts` knows (the BERT family, MPNet)."""
    layers = encoder_layers(model)
    return bool(layers) and _layer_parts(layers[-1]) is not None


def mean_pooling_is_exact(model) -> bool:
    """False where the encoder adds a relative-position bias to every layer's attention scores
    (MPNet's `relative_attention_bias`, shared by all layers, so the added layer gets it too): there
    the added layer's [CLS] attends by a fixed, learned weighting of the distance to each token, not
    uniformly; see `add_mean_pooling_layer`."""
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    return getattr(encoder, "relative_attention_bias", None) is None


def add_mean_pooling_layer(model, scale: float = MEAN_POOLING_SCALE) -> None:
    """Append the mean-pooling layer described above to `model` in place (and to its config).

    MPNet: its encoder adds one relative-position bias, shared by all layers, to the attention
    scores, so the added layer's [CLS] row is softmax(bias[distance to each token]) over the unpadded
    tokens, a fixed distance-weighted mean rather than the uniform one (`mean_pooling_is_exact`). No
    plain-loadable construction removes it: the bias table is shared with the 12 pretrained layers,
    and the query/key path cannot cancel a term that depends only on position. We keep this layer,
    the closest plain-loadable start: on all-mpnet-base-v2 its [CLS] state has cosine 0.975 on average
    (0.947 at worst) with the true layer-normalised mean over 64 SST-2 sentences, against 0.869 for
    the backbone's own [CLS] state; its effect on a real task is in docs/backbones.md."""
    layers = encoder_layers(model)
    if not supports_mean_pooling_layer(model):
        raise ValueError(f"{type(model).__name__} is not a BERT-style encoder; use model.pooling: cls")
    layer = copy.deepcopy(layers[-1])
    parts = _layer_parts(layer)
    hidden = model.config.hidden_size
    eye = torch.eye(hidden)
    with torch.no_grad():
        parts["query"].weight.zero_()
        parts["query"].bias.zero_()
        parts["value"].weight.copy_(eye)
        parts["value"].bias.zero_()
        parts["attn_out"].weight.copy_(scale * eye)
        parts["attn_out"].bias.zero_()
        for norm in (parts["attn_norm"], parts["ffn_norm"]):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        parts["ffn_out"].weight.zero_()
        parts["ffn_out"].bias.zero_()
    index = len(layers)
    for module in layer.modules():  # the copy keeps its source's index, used by caches only
        if hasattr(module, "layer_idx"):
            module.layer_idx = index
    layers.append(layer)
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

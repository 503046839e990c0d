"""The last encoder layer computed at the [CLS] position only, when a classifier predicts or trains.

A sequence classifier of the BERT family reads one position of its last layer: [CLS] (the pooler's or
the head's `[:, 0]`). Every other position of that layer is computed, back-propagated and thrown
away. In the last layer only the keys and values need every position; the query, the attention's
output projection and the feed-forward block (10 of the layer's 12 d^2 multiply-adds per token) need
[CLS] alone. On MiniLM with tunery's mean-pooling layer (7 layers) that is about an eighth of the
model's FLOPs, forward and backward; the logits are the same to float rounding, and the weights and
the saved model are untouched (the layer's forward is replaced on the instance, and restored).

Used on the BERT-layout classifiers below (`last_layer`):
- by every torch prediction (inference.predict_scores: evaluate, predict, serve), forward only, where
  it is exact;
- by the training loop (train.cls_only_last_layer, on by default), checked on the run's first batch
  against the full layer (`matches_full_layer`). Not with distillation (it reads every layer's hidden
  states) nor DP-SGD (Opacus's hooks see every row). With dropout on, every dropout of the layer
  (LoRA's adapters' included) draws the random numbers the full layer draws and applies [CLS]'s share
  (`full_draw_dropout`): the same masks at [CLS], the generator left in the same state, so a seed
  trains along the same path with the shortcut or without it, to float rounding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from tunery.layers import encoder_layers

# Heads that read only the last layer's position 0 (BertPooler, or the head's features[:, 0, :]).
CLS_HEADS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
             "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
             "ElectraForSequenceClassification")


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def last_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """The last encoder layer of a BERT-layout sequence classifier, or None where the shortcut does
    not apply (another head or layer layout, a decoder, chunked feed-forward)."""
    plain = _plain(model)
    if type(plain).__name__ not in CLS_HEADS:
        return None
    layers = encoder_layers(plain)
    if not layers:
        return None
    layer = layers[-1]
    att = getattr(layer, "attention", None)
    sa, so = getattr(att, "self", None), getattr(att, "output", None)
    if not all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads", "attention_head_size",
                                         "scaling", "dropout")) or so is None:
        return None
    if getattr(layer, "is_decoder", False) or getattr(layer, "chunk_size_feed_forward", 0):
        return None
    return layer


def full_draw_dropout(x: torch.Tensor, p: float, full_shape: tuple[int, ...]) -> torch.Tensor:
    """Dropout of `x`, the leading corner ([CLS]'s part) of a tensor of `full_shape`, with the random
    numbers the full tensor's dropout draws: the mask is drawn at the full shape (as `F.dropout` and
    SDPA's dropout draw it: `bernoulli_(1 - p)` in memory order, then `/ (1 - p)`) and [CLS]'s part
    kept, so [CLS] gets the full layer's mask and the generator ends where the full layer leaves it."""
    noise = x.new_empty(full_shape).bernoulli_(1 - p)
    noise.div_(1 - p)
    return x * noise[tuple(slice(0, n) for n in x.shape)]


class _Tokens(threading.local):
    """The sequence length of the last layer's current call, per thread (its dropouts draw for it)."""
    t = 0


def _full_draw_dropout_forward(module: torch.nn.Dropout, tokens: _Tokens):
    """A forward for a Dropout inside the last layer: a [CLS]-only input (B, 1, ...) in training is
    dropped with the full (B, T, ...) input's random numbers; anything else as nn.Dropout does."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        t = tokens.t
        if module.training and module.p > 0 and x.dim() >= 2 and x.shape[1] == 1 and t > 1:
            return full_draw_dropout(x, module.p, (x.shape[0], t, *x.shape[2:]))
        return F.dropout(x, module.p, module.training, module.inplace)
    return forward


def cls_only_forward(layer: torch.nn.Module, tokens: _Tokens):
    """A forward for BERT `layer` that returns its output at position 0 only, (B, 1, H). In training
    with dropout, every dropout draws the random numbers the full layer draws, in its order (query,
    key, value adapters; attention; output projection; feed-forward), and applies [CLS]'s share: the
    same outputs as the full layer's [CLS] row to float rounding, and the generator left in the same
    state, so a seed trains along the same path with the shortcut or without it."""
    sa, so = layer.attention.self, layer.attention.output

    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        b, t, _ = hidden_states.shape
        tokens.t = t
        heads, size = sa.num_attention_heads, sa.attention_head_size
        cls = hidden_states[:, :1]
        q = sa.query(cls).view(b, 1, heads, size).transpose(1, 2)
        k = sa.key(hidden_states).view(b, t, heads, size).transpose(1, 2)
        v = sa.value(hidden_states).view(b, t, heads, size).transpose(1, 2)
        mask = attention_mask  # (B, 1, T, T) boolean or additive, or None without padding: [CLS]'s row
        if mask is not None and mask.dim() == 4 and mask.shape[-2] != 1:
            mask = mask[:, :, :1, :]
        p = sa.dropout.p if sa.training else 0.0
        if p > 0:  # the attention's dropout, drawn for the (B, heads, T, T) weights as SDPA draws it
            scores = torch.matmul(q, k.transpose(-1, -2)) * sa.scaling
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = full_draw_dropout(scores.softmax(-1), p, (b, heads, t, t))
            context = torch.matmul(weights, v)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling)
        attended = so(context.transpose(1, 2).reshape(b, 1, heads * size), cls)
        return layer.output(layer.intermediate(attended), attended)

    return forward


_installs = threading.Lock()
_DEPTH = "_tunery_cls_only_depth"


@contextlib.contextmanager
def cls_only_last_layer(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, `model`'s last layer computes [CLS] only (yields True), where it applies.
    Re-entrant and thread-safe (a served model predicts in one thread while it explains in another):
    the first block to enter installs the forward, the last to leave restores the class's."""
    layer = last_layer(model) if enabled else None
    if layer is None:
        yield False
        return
    with _installs:
        depth = getattr(layer, _DEPTH, 0)
        if depth == 0:  # instance attributes shadow the classes' forwards
            tokens = _Tokens()
            layer.forward = cls_only_forward(layer, tokens)
            for module in _dropouts(layer):
                module.forward = _full_draw_dropout_forward(module, tokens)
        setattr(layer, _DEPTH, depth + 1)
    try:
        yield True
    finally:
        with _installs:
            depth = getattr(layer, _DEPTH) - 1
            setattr(layer, _DEPTH, depth)
            if depth == 0:
                del layer.forward
                for module in _dropouts(layer):
                    del module.forward


def _dropouts(layer: torch.nn.Module) -> list[torch.nn.Dropout]:
    """The layer's Dropout modules that see its [CLS]-only tensors (LoRA's adapters' among them); the
    attention's own is applied by the shortcut's forward."""
    own = layer.attention.self.dropout
    return [m for m in layer.modules() if type(m) is torch.nn.Dropout and m is not own]


def matches_full_layer(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float | None:
    """The largest logit difference between the full last layer and the [CLS]-only one on `batch`
    (eval mode, no gradient), or None where the shortcut does not apply. Dropout is off for the
    comparison; the model's mode is restored."""
    layer = last_layer(model)
    if layer is None:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(**batch).logits.float()
            with cls_only_last_layer(model):
                short = model(**batch).logits.float()
    finally:
        model.train(was_training)
    return float((full - short).abs().max())

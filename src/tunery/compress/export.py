"""A run's torch model as an ONNX graph, then ONNX Runtime's transformer graph optimisations.

Export: torch's current exporter (`torch.onnx.export(dynamo=True)`, torch.export underneath), with
the batch and sequence axes dynamic. Where it fails, the TorchScript exporter with eager attention.
The caller checks parity with torch on real rows either way: with transformers 5 the TorchScript
exporter traces some attention-mask branches as constants (MiniLM: logits off by 0.16-0.25 on a
batch of other lengths), which the parity check refuses.

Optimisation, before quantising: for the dynamo graph, onnxscript's ONNX Runtime fusions
(`onnxscript.rewriter.ort_fusions.optimize_for_ort`: attention into one Attention operator per layer,
SkipLayerNorm, BiasGelu), which recognise that exporter's graph; ONNX Runtime's own
`transformers.optimizer` (LayerNorm, SkipLayerNorm and BiasGelu fusions) matches attention only in
the TorchScript graph, and serves where onnxscript's fusions fail or fuse no attention. On a
full-SST-2 MiniLM run the fused attention made int8 lose 0.11 points instead of 0.69 (its Q, K and V
projections stay fp32 inside the Attention operator) and fp32 1.1x faster. Hugging Face Optimum wraps
the same steps but does not install beside transformers 5.

For int8 the projections can be left out of the fusion (`fuse_projections=False`): attention becomes a
MultiHeadAttention operator fed by three plain MatMul nodes, which the quantiser turns into int8 like
the feed-forward ones (sharing one quantised input). ONNX Runtime's quantiser cannot do it on the fused
operator: it refuses Attention nodes with `qkv_hidden_sizes` (onnxscript's) and its QAttention has no
additive mask input. On a VNNI CPU the int8 projections made a MiniLM 1.30x faster than int8 with fp32
projections (350 against 270 texts/s, batches of 32, 2 threads).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OPSET = 18
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Logits(torch.nn.Module):
    """The classifier as (input_ids, attention_mask[, token_type_ids]) -> logits (B, C), for the exporter."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def example_inputs(with_token_types: bool, *, batch: int = 2, length: int = 9):
    """Int64 inputs of a padded batch (the second row shorter), for tracing."""
    ids = torch.randint(1000, 2000, (batch, length), dtype=torch.long)
    mask = torch.ones((batch, length), dtype=torch.long)
    mask[1:, length - 3:] = 0
    ids[1:, length - 3:] = 0
    inputs = [ids, mask]
    if with_token_types:
        inputs.append(torch.zeros_like(ids))
    return tuple(inputs)


def export_onnx(model, path: Path, *, with_token_types: bool, exporter: str = "auto") -> tuple[str, bool]:
    """Write `model` (an AutoModelForSequenceClassification in eval mode) as one ONNX file at `path`;
    returns the exporter used ("dynamo" or "torchscript") and whether the graph's last layer computes
    [CLS] only. `exporter`: auto (dynamo, else torchscript), dynamo or torchscript.

    The dynamo export traces the model inside `cls_only_last_layer`, as tunery predicts with torch:
    the head reads [CLS] only, so the last layer's other rows are never computed (the same logits; a
    full-SST-2 MiniLM with its mean-pooling layer: int8 1.14x faster). The TorchScript fallback
    traces the full layer."""
    names = list(INPUTS[: 3 if with_token_types else 2])
    inputs = example_inputs(with_token_types)
    errors = []
    for kind in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    cls_only = _export_dynamo(model, inputs, names, path)
                else:
                    _export_torchscript(model, inputs, names, path)
                    cls_only = False
            return kind, cls_only
        except Exception as err:  # noqa: BLE001 - any exporter failure: try the next one, report all
            errors.append(f"{kind}: {type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}")
            log.warning("the %s ONNX exporter failed (%s)%s", kind, errors[-1],
                        "; trying the TorchScript one" if kind == "dynamo" and exporter == "auto" else "")
            path.unlink(missing_ok=True)
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


def _export_dynamo(model, inputs, names, path: Path) -> bool:
    from tunery.cls_only import cls_only_last_layer

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {n: {0: batch, 1: sequence} for n in names}
    with cls_only_last_layer(model) as cls_only:
        program = torch.onnx.export(Logits(model).eval(), inputs, input_names=names, output_names=["logits"],
                                    dynamic_shapes=shapes, dynamo=True, opset_version=OPSET, external_data=False,
                                    verbose=False)
    program.save(os.fspath(path))
    return cls_only


def _export_torchscript(model, inputs, names, path: Path) -> None:
    before = getattr(model.config, "_attn_implementation", None)
    model.config._attn_implementation = "eager"  # traced SDPA masks are the TorchScript exporter's weak spot
    try:
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
        torch.onnx.export(Logits(model).eval(), inputs, os.fspath(path), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, dynamo=False, opset_version=17)
    finally:
        model.config._attn_implementation = before


def optimize_onnx(src: Path, dst: Path, *, num_heads: int, hidden_size: int, exporter: str = "dynamo",
                  fuse_projections: bool = True) -> dict[str, int]:
    """The transformer fusions of `src` (see the module's docstring), written to `dst`; returns the
    count of each fusion made (zero counts left out), under "onnxscript:" or "onnxruntime:" names.
    `fuse_projections=False` keeps the Q, K and V projections as MatMul nodes beside a
    MultiHeadAttention operator (what int8 quantises), instead of inside one Attention operator."""
    fused = "attention" if fuse_projections else "mha_bias"
    if exporter == "dynamo":
        try:
            counts = _onnxscript_fusions(src, dst, fuse_projections=fuse_projections)
            if counts.get(f"onnxscript:{fused}"):
                return counts
            log.info("onnxscript fused no attention in %s: using ONNX Runtime's optimizer", src)
        except Exception as err:  # noqa: BLE001 - any failure of the rewriter: the other optimizer serves
            log.warning("onnxscript's fusions failed (%s: %s): using ONNX Runtime's optimizer", type(err).__name__, err)
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = not fuse_projections
    opt = optimize_model(os.fspath(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                         optimization_options=options, opt_level=0)  # graph fusions only: ORT adds its own at start
    opt.save_model_to_file(os.fspath(dst))
    return {f"onnxruntime:{k}": int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}


def _onnxscript_fusions(src: Path, dst: Path, *, fuse_projections: bool) -> dict[str, int]:
    """onnxscript's ONNX Runtime fusions. Without `fuse_projections` its last attention step (folding
    the projections into Attention) is skipped: `optimize_for_ort` has no switch for it, so its
    module's `fuse_attention` is replaced for the call; the count says whether that took."""
    import contextlib
    from unittest import mock

    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import _core, optimize_for_ort

    keep = contextlib.nullcontext() if fuse_projections else mock.patch.object(
        _core, "fuse_attention", lambda model, debug=False: 0)
    with keep:
        model, counts = optimize_for_ort(ir.load(os.fspath(src)))
    ir.save(model, os.fspath(dst))
    return {f"onnxscript:{k}": int(v) for k, v in counts.items() if v}

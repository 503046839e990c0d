"""The ONNX Runtime Predictor backend: a run whose model/ folder holds model.onnx (tunery.json
"backend": "onnx", written by `tunery compress`), fp32 or int8.

The run answers as a transformer run does (`predict`, `predict_file`, `score`), so `tunery predict`,
`evaluate`, `serve` (batched and metered by tokens as before: the tokenizer is the original's) and
`tunery.load` take it. It does not load with `AutoModelForSequenceClassification.from_pretrained`:
model/ holds the ONNX graph, the tokenizer and config.json, no safetensors weights. The graph runs
with plain onnxruntime as well; its inputs are int64 (batch, sequence) arrays input_ids and
attention_mask (and token_type_ids where the tokenizer makes them), its output the logits:

    import onnxruntime as ort
    session = ort.InferenceSession("runs/NAME/model/model.onnx")
    logits, = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tunery.errors import RunError
from tunery.inference import Encoded, score_batches
from tunery.predict import Predictor

BACKEND = "onnx"
ONNX_FILE = "model.onnx"
INSTALL_HINT = "pip install 'tunery[onnx]'"


def session_options(threads: int | None):
    """ONNX Runtime settings for serving: `threads` intra-op threads (None: ONNX Runtime's default,
    one per physical core), one inter-op thread (the graph is a chain), every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    return options


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of the graph at `path`; RunError naming the file and the fix."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RunError(f"{path}: an ONNX model needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/NoSuchFile types
        first = (str(err).strip().splitlines() or [""])[0]
        raise RunError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}: {first[:300]}); the run "
                       "directory is damaged: restore it from a copy or compress the source run again") from err


def onnx_logits(session, data, *, batch_size: int, pad_id: int) -> np.ndarray:
    """The graph's logits (N, C) for every row of `data` (an Encoded split), in row order; each batch
    is fed the inputs the graph declares."""
    wanted = {i.name for i in session.get_inputs()}
    return score_batches(lambda b: session.run(["logits"], {k: v for k, v in b.items() if k in wanted})[0], data,
                         batch_size=batch_size, pad_id=pad_id)


class OnnxPredictor(Predictor):
    """A loaded ONNX run. `model` is its onnxruntime.InferenceSession. It explains by word removal
    (occlusion, LIME, SHAP), not by gradients (IG), which the graph does not give."""

    supports_gradients = False

    def encoded_scores(self, data: Encoded) -> np.ndarray:
        import torch

        logits = onnx_logits(self.model, data, batch_size=self.batch_size, pad_id=self.tokenizer.pad_token_id or 0)
        return self.task.scores(torch.from_numpy(logits))


def load_onnx(run_dir: Path, meta: dict, *, batch_size: int = 64, threads: int | None = None) -> OnnxPredictor:
    """The ONNX run at `run_dir` (its tunery.json already read into `meta`)."""
    from transformers import AutoTokenizer

    from tunery.inference import quiet_transformers

    path = run_dir / "model" / ONNX_FILE
    if not path.is_file():
        raise RunError(f"{run_dir / 'tunery.json'} says backend 'onnx' but {path} is missing; the run directory "
                       "is damaged: restore it from a copy or compress the source run again")
    session = open_session(path, threads)
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    except Exception as err:  # noqa: BLE001
        raise RunError(f"{run_dir / 'model'}: no loadable tokenizer ({type(err).__name__}); the run directory is "
                       "damaged: restore it from a copy or compress the source run again") from err
    return OnnxPredictor(session, tokenizer, meta, run_dir=run_dir, batch_size=batch_size, precision="fp32")

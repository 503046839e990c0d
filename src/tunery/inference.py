"""The inference core that training's evaluation and every predictor backend share: tokenised
splits, length-sorted batches with dynamic padding, the scoring loop, and the precision choice.

It imports neither the pipeline nor the training loop, so that `predict`, `serve` and each
backend (torch, ONNX Runtime, TF-IDF) load without them. Arrays are numpy; the torch backend turns
them into tensors without a copy (`torch.from_numpy`), the ONNX backend feeds them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Encoded:
    """One tokenised split: token ids per row, plus labels as the task stores them."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.input_ids)

    def extended(self, more: Encoded) -> Encoded:
        """These rows followed by `more`'s (the same tokenizer's)."""
        types = None if self.token_type_ids is None else self.token_type_ids + (more.token_type_ids or [])
        return Encoded(self.input_ids + more.input_ids, types, list(self.labels) + list(more.labels))

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def encode(tokenizer, texts: list[str], pairs: list[str] | None, labels: list[Any], *, max_length: int) -> Encoded:
    # segment ids only where the model takes them (BERT does, DistilBERT and RoBERTa do not)
    with_types = pairs is not None and "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    if not texts:  # an empty split (test_fraction: 0); fast tokenizers fail on an empty batch
        return Encoded([], [] if with_types else None, list(labels))
    enc = tokenizer(
        texts,
        pairs,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=with_types,
    )
    return Encoded(enc["input_ids"], enc.get("token_type_ids") if with_types else None, list(labels))


def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches sorted by length for inference (the caller scatters results back by index)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(data: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """The rows `idx` padded to the longest among them: int64 arrays (B, T) of input_ids and
    attention_mask, and token_type_ids where the split has them."""
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if data.token_type_ids is not None:
        tt = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(idx):
            t = data.token_type_ids[i]
            tt[j, : len(t)] = t
        batch["token_type_ids"] = tt
    return batch


def collate(data: Encoded, idx: np.ndarray, pad_id: int) -> dict:
    """`pad_batch` as (B, T) torch tensors."""
    import torch

    return {k: torch.from_numpy(v) for k, v in pad_batch(data, idx, pad_id).items()}


def score_batches(scores_of: Callable[[dict[str, np.ndarray]], np.ndarray], data: Encoded, *, batch_size: int,
                  pad_id: int) -> np.ndarray:
    """`scores_of(batch)` for every row of `data`, in row order: batches run longest first (little
    padding), results are scattered back. (N, C) or (N,); an empty split gives zeros((0,))."""
    out: list[np.ndarray | None] = [None] * len(data)
    for idx in eval_order(data.lengths, batch_size):
        scores = scores_of(pad_batch(data, idx, pad_id))
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return np.stack(out) if len(out) else np.zeros((0,))


def predict_scores(model, task, data: Encoded, *, batch_size: int, pad_id: int, accelerator=None) -> np.ndarray:
    """The task's scores of a torch model for every row of `data`, in row order."""
    import torch

    from tunery.cls_only import cls_only_last_layer

    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device

    @torch.no_grad()
    def scores_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        if accelerator is not None:
            with accelerator.autocast():
                logits = model(**inputs).logits
        else:
            logits = model(**inputs).logits
        return task.scores(logits.cpu())

    with cls_only_last_layer(model):  # the head reads [CLS] only: the same scores for less compute
        return score_batches(scores_of, data, batch_size=batch_size, pad_id=pad_id)


def torch_logits(model, data: Encoded, *, batch_size: int, pad_id: int, precision: str = "fp32") -> np.ndarray:
    """A torch classifier's logits (N, C) in float32 for every row of `data`, in row order, computed in
    `precision` (fp32, or bf16 under autocast: for soft labels, where the speed matters more than
    the last digits) on the device the model is on (CPU or CUDA)."""
    import contextlib

    import torch

    from tunery.cls_only import cls_only_last_layer

    model.eval()
    device = next(model.parameters()).device
    cast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())

    @torch.no_grad()
    def logits_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        with cast:
            logits = model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()}).logits
        return logits.float().cpu().numpy()

    with cls_only_last_layer(model):  # exact: the head reads [CLS] only
        return score_batches(logits_of, data, batch_size=batch_size, pad_id=pad_id)


def resolve_device(device: str = "auto") -> str:
    """The torch device a model runs on, decided in one place (the predictor, the teacher labeller and
    the probe): "auto" is "cuda" where torch sees a GPU, else "cpu"; "cpu" and "cuda" as given.
    Raises ValueError naming the value and the fix for anything else, or "cuda" without a GPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}: give auto (a GPU where there is one), cpu or cuda")
    if device == "cpu":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ValueError("device 'cuda': torch sees no GPU here (torch.cuda.is_available() is False); give "
                         "device 'cpu' or 'auto', or install a CUDA build of torch on a machine with a GPU")
    return "cpu"


def fast_bf16_available() -> bool:
    """True where bf16 autocast speeds training up: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """"auto" as "bf16" where bf16 is fast here, else "fp32"; any other value as it is."""
    if precision == "auto":
        return "bf16" if fast_bf16_available() else "fp32"
    return precision


def quiet_transformers() -> None:
    """transformers without its info logs and progress bars (tunery reports its own progress)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

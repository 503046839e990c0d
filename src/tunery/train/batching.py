"""Tokenised splits, length-grouped batches and dynamic padding.

Batches of similar length waste little compute on padding: on short-text data such as SST-2 a
random batch is padded to ~3x its mean length. Grouping happens inside shuffled "mega-batches",
so batch order stays random, and the order is a pure function of (seed, epoch): a resumed run
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Encoded:
    """One tokenised split: token ids per row, plus labels as the task stores them."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.input_ids)

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


def batch_order(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                mega_batches: int = 50) -> list[np.ndarray]:
    """Row indices of each batch of one epoch, deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    span = batch_size * mega_batches
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches sorted by length for inference (the caller scatters results back by index)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(data: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the rows `idx` to the longest among them. Returns (B, T) tensors."""
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.as_tensor(r)
        mask[j, : len(r)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if data.token_type_ids is not None:
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(idx):
            t = data.token_type_ids[i]
            tt[j, : len(t)] = torch.as_tensor(t)
        batch["token_type_ids"] = tt
    return batch

"""Single-label (binary, multi-class) and multi-label classification."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunery.tasks.base import Task


class SingleLabelClassification(Task):
    name = "classification"
    problem_type = "single_label_classification"

    def num_outputs(self, label_names: list[str]) -> int:
        return len(label_names)

    def label_tensor(self, labels: list[Any], n_labels: int) -> torch.Tensor:
        return torch.as_tensor(labels, dtype=torch.long)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits.float(), dim=-1).numpy()

    def y_true(self, labels: list[Any], n_labels: int) -> np.ndarray:
        return np.asarray(labels, dtype=np.int64)

    def decode(self, scores: np.ndarray, label_names: list[str], *, threshold: float) -> list[dict]:
        top = scores.argmax(axis=1)
        return [
            {
                "label": label_names[k],
                "score": float(row[k]),
                "probabilities": {n: float(p) for n, p in zip(label_names, row)},
            }
            for k, row in zip(top, scores)
        ]


class MultiLabelClassification(Task):
    name = "multilabel"
    problem_type = "multi_label_classification"

    def num_outputs(self, label_names: list[str]) -> int:
        return len(label_names)

    def label_tensor(self, labels: list[Any], n_labels: int) -> torch.Tensor:
        return torch.as_tensor(self.y_true(labels, n_labels), dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(logits.float()).numpy()

    def y_true(self, labels: list[Any], n_labels: int) -> np.ndarray:
        hot = np.zeros((len(labels), n_labels), dtype=np.int64)  # (N, C) multi-hot
        for i, idx in enumerate(labels):
            hot[i, list(idx)] = 1
        return hot

    def decode(self, scores: np.ndarray, label_names: list[str], *, threshold: float) -> list[dict]:
        """`threshold`: a float, or one per label in label_names order."""
        on = np.asarray(scores) >= np.asarray(threshold, dtype=float)
        out = []
        for row, hits in zip(scores, on):
            chosen = [n for n, hit in zip(label_names, hits) if hit]
            out.append(
                {
                    "labels": chosen,
                    "score": float(row.max()),
                    "probabilities": {n: float(p) for n, p in zip(label_names, row)},
                }
            )
        return out

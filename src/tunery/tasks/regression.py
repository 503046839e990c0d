"""Regression on one target. Targets are standardised for training; predictions are in the
target's own units (the mean and scale live in tunery.json)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunery.tasks.base import Task


class Regression(Task):
    name = "regression"
    problem_type = "regression"

    def __init__(self, mean: float = 0.0, scale: float = 1.0) -> None:
        self.mean = mean
        self.scale = scale

    def num_outputs(self, label_names: list[str]) -> int:
        return 1

    def label_tensor(self, labels: list[Any], n_labels: int) -> torch.Tensor:
        y = (np.asarray(labels, dtype=np.float32) - self.mean) / self.scale
        return torch.as_tensor(y, dtype=torch.float32)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().squeeze(-1).numpy() * self.scale + self.mean

    def y_true(self, labels: list[Any], n_labels: int) -> np.ndarray:
        return np.asarray(labels, dtype=np.float64)

    def decode(self, scores: np.ndarray, label_names: list[str], *, threshold: float) -> list[dict]:
        return [{"value": float(v)} for v in np.atleast_1d(scores)]

"""What differs between tasks: the head, the label tensor, and how logits become predictions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class Task(ABC):
    name: str
    problem_type: str  # the transformers `problem_type`, which selects the loss

    @abstractmethod
    def num_outputs(self, label_names: list[str]) -> int: ...

    @abstractmethod
    def label_tensor(self, labels: list[Any], n_labels: int) -> torch.Tensor:
        """Labels of one batch as the model's loss expects them."""

    @abstractmethod
    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Logits (B, C) -> probabilities (B, C), or predictions (B,) for regression."""

    @abstractmethod
    def y_true(self, labels: list[Any], n_labels: int) -> np.ndarray:
        """Labels of a split in the array form evaluate.metrics expects."""

    @abstractmethod
    def decode(self, scores: np.ndarray, label_names: list[str], *, threshold) -> list[dict]:
        """Scores -> one JSON-ready prediction per row (multi-label `threshold`: a float or one per label)."""

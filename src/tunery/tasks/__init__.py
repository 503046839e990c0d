"""Tasks by name."""

from __future__ import annotations

from tunery.tasks.base import Task
from tunery.tasks.classification import MultiLabelClassification, SingleLabelClassification
from tunery.tasks.regression import Regression


def get_task(name: str, *, label_mean: float = 0.0, label_scale: float = 1.0) -> Task:
    if name == "classification":
        return SingleLabelClassification()
    if name == "multilabel":
        return MultiLabelClassification()
    if name == "regression":
        return Regression(label_mean, label_scale)
    raise ValueError(f"unknown task {name!r}; expected classification, multilabel or regression")


__all__ = ["Task", "get_task", "SingleLabelClassification", "MultiLabelClassification", "Regression"]

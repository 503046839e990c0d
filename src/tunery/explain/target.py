"""The one number an explanation explains: the model's score for a target, as a function of which
words are present (every method but IG) or of the token embeddings (IG).

- single-label classification: the probability of the target class;
- multi-label: the probability of the target label;
- regression: the predicted value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunery.errors import ExplainError
from tunery.explain.words import WordTokens
from tunery.inference import Encoded


@dataclass(frozen=True)
class Target:
    """What is explained: `index` into the model's scores (None for regression) and its name."""

    index: int | None
    name: str | None


def choose_target(predictor, scores: np.ndarray, target) -> Target:
    """The target for one input: the given label (a name or an index), else the predicted class
    (single-label), the highest-scoring label (multi-label) or the value (regression)."""
    task = predictor.meta["task"]
    if task == "regression":
        if target not in (None, "value"):
            raise ExplainError(f"target {target!r}: a regression model has one output, its value; leave out the target")
        return Target(None, None)
    names = predictor.label_names
    if target is None:
        k = int(np.argmax(scores))
        return Target(k, names[k])
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= target < len(names):
            raise ExplainError(f"target {target}: this model has labels 0..{len(names) - 1} ({', '.join(names)})")
        return Target(int(target), names[int(target)])
    if str(target) in names:
        return Target(names.index(str(target)), str(target))
    raise ExplainError(f"target {target!r} is not one of this model's labels: {', '.join(map(repr, names))}")


def pick(scores: np.ndarray, target: Target) -> np.ndarray:
    """The target's column of task scores: (N, C) -> (N,), or the values (N,) as they are."""
    return scores if target.index is None else scores[:, target.index]


class WordFunction:
    """f(keep): the target score of the input with only the words where `keep` is True, for a batch
    of keep masks (B, W). Counts the model evaluations it makes."""

    def __init__(self, predictor, tokens: WordTokens, target: Target) -> None:
        self.predictor = predictor
        self.tokens = tokens
        self.target = target
        self.evaluations = 0

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        keep = np.atleast_2d(np.asarray(keep) > 0.5)
        rows = [self.tokens.keep(k) for k in keep]
        types = [t.tolist() for _, t in rows] if self.tokens.token_type_ids is not None else None
        data = Encoded([ids.tolist() for ids, _ in rows], types, [None] * len(rows))
        self.evaluations += len(rows)
        return pick(self.predictor.encoded_scores(data), self.target).astype(np.float64)


def torch_target(logits, task: str, target: Target, meta: dict):
    """The target score from a batch of logits, differentiable (IG's forward function)."""
    import torch

    if task == "regression":
        return logits[:, 0].float() * float(meta.get("label_scale", 1.0)) + float(meta.get("label_mean", 0.0))
    if task == "multilabel":
        return torch.sigmoid(logits.float())[:, target.index]
    return torch.softmax(logits.float(), dim=-1)[:, target.index]

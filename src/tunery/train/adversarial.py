"""Adversarial training on the word embeddings: FGM (Miyato, Dai & Goodfellow, 2017, "Adversarial
Training Methods for Semi-Supervised Text Classification").

Each step also trains on the batch with every text's word embeddings moved in the direction that
raises the loss most, to first order, by `epsilon` times their own L2 norm (over the text's
tokens). The model learns to keep its answer when the input vectors move a little, so words whose
embeddings sit near the ones it was trained on (synonyms, words missing from the training data) are
read more alike. Too large a move stops learning altogether: the gradient gathers on the few words
that decide the label, and moving "great" as far as "bad" leaves nothing robust to learn. One step
costs two forward and two backward passes.

Only the output of the input-embedding module is touched, through a forward hook: this works for any
Hugging Face model, with frozen or trainable embeddings, and the saved model is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def fgm_perturbation(grad: torch.Tensor, embeds: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The FGM step for each text of a batch: `grad` and `embeds` are (batch, tokens, hidden). Each
    text moves along its own gradient by `epsilon` times the L2 norm of its embeddings, so the same
    epsilon means the same relative change for any backbone's embedding scale. Tokens with no
    gradient (padding) neither move nor count in the norm."""
    g = grad.float()
    active = (g != 0).any(dim=-1, keepdim=True)  # (batch, tokens, 1)
    size = (embeds.detach().float() * active).flatten(1).norm(dim=1)
    g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    step = (epsilon * size / g_norm).view(-1, *([1] * (g.ndim - 1)))
    return (step * g).to(grad.dtype)


class EmbeddingAdversary:
    """Captures the gradient of the loss with respect to the word embeddings of the clean pass and
    adds the FGM perturbation to them during the adversarial pass. The constructor only stores;
    `attach` registers the hook, `detach` removes it."""

    def __init__(self, embeddings: torch.nn.Module, epsilon: float) -> None:
        self.embeddings = embeddings
        self.epsilon = epsilon
        self._handle = None
        self._clean: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None

    def attach(self) -> EmbeddingAdversary:
        self._handle = self.embeddings.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._clean = self._delta = None

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self._delta is not None:
            return output + self._delta
        if torch.is_grad_enabled() and module.training:
            if not output.requires_grad:  # frozen embeddings: make the lookup a leaf we can differentiate
                output.requires_grad_()
            output.retain_grad()
            self._clean = output
        return None

    @contextmanager
    def perturbed(self) -> Iterator[None]:
        """Within the block, forward passes see the embeddings of the last clean pass (call after its
        backward) moved by the FGM perturbation."""
        clean, self._clean = self._clean, None
        if clean is None or clean.grad is None:
            raise RuntimeError("EmbeddingAdversary.perturbed() needs a clean forward and backward pass first")
        self._delta = fgm_perturbation(clean.grad.detach(), clean.detach(), self.epsilon)
        try:
            yield
        finally:
            self._delta = None

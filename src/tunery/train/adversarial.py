"""Adversarial training on the word embeddings, and R-Drop.

- **FGM** (Miyato, Dai & Goodfellow, 2017, "Adversarial Training Methods for Semi-Supervised Text
  Classification"): each step also trains on the batch with every text's word embeddings moved in
  the direction that raises the loss most, to first order, by `epsilon` times their own L2 norm (over
  the text's tokens). Two forward and two backward passes a step.
- **PGD-K** (Madry et al., 2018, as used for text by Zhu et al., 2020): the move is found by K
  steps of normalised gradient ascent of `step_size` (times the text's embedding norm), each
  projected back into the ball of radius `epsilon` (same unit); the step trains on the clean batch
  and on the last, strongest perturbation. K + 1 passes a step; the K - 1 intermediate backward
  passes compute the gradient for the perturbation only, not for the weights.
- **FreeLB** (Zhu et al., 2020, "FreeLB: Enhanced Adversarial Training for Natural Language
  Understanding", Algorithm 1): the perturbation starts at a random point of the ball's inner half
  and climbs K ascent steps as in PGD, and the weights get the mean of the gradients of all K
  perturbed passes ("free" adversarial training: each pass's backward serves the weights and the
  perturbation at once). There is no separate clean pass. K passes a step.
- **R-Drop** (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks"): each batch
  goes through the model twice (two dropout masks, one forward over the batch doubled) and the loss
  adds `alpha` times the symmetric divergence of the two predictions: KL both ways for classes,
  per-label Bernoulli KL for multi-label, the squared difference for regression. The loss is the
  paper's (both passes' task losses plus alpha times the mean of the two KLs) halved, so that its
  scale and a learning rate tuned without it stay those of plain training.

The model learns to keep its answer when the input vectors move a little, so words whose embeddings
sit near the ones it was trained on (synonyms, misspellings mapped to near pieces, words missing
from the training data) are read more alike. Too large a move stops learning altogether: the
gradient gathers on the few words that decide the label, and moving "great" as far as "bad" leaves
nothing robust to learn.

Only the output of the input-embedding module is touched, through a forward hook: this works for any
Hugging Face model, with frozen or trainable embeddings, with LoRA, and the saved model is unchanged.
Norms count a text's real tokens only (attention mask 1): padding never moves. FreeLB's random
start draws from a generator seeded by the run's seed and the step, so runs repeat and a resumed run
continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

import torch


def text_norms(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Each text's L2 norm over its active tokens: x (batch, tokens, hidden), active (batch, tokens)."""
    return (x.float() * active[..., None]).flatten(1).norm(dim=1)


def project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Each text's perturbation shrunk into the ball of its radius (batch,) (unchanged inside it)."""
    norms = delta.float().flatten(1).norm(dim=1)
    scale = torch.where(norms > radius, radius / norms.clamp_min(1e-12), torch.ones_like(norms))
    return delta * scale.view(-1, *([1] * (delta.ndim - 1))).to(delta.dtype)


def ascend(delta: torch.Tensor, grad: torch.Tensor, length: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One normalised ascent step: each text's perturbation moved along its gradient by `length`
    (batch,); inactive tokens (padding) stay at zero."""
    g = grad.float() * active[..., None]
    g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta + ((length / g_norm).view(-1, 1, 1) * g).to(delta.dtype)


def random_start(embeds: torch.Tensor, active: torch.Tensor, radius: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """FreeLB's start: uniform noise on the active tokens, scaled to half of each text's radius."""
    noise = torch.rand(embeds.shape, generator=generator, dtype=torch.float32).mul_(2).sub_(1)
    noise = noise.to(embeds.device) * active[..., None]
    norms = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (noise * (0.5 * radius / norms).view(-1, 1, 1)).to(embeds.dtype)


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
    adds a perturbation to them during adversarial passes (FGM, PGD, FreeLB: `step`). The
    constructor only stores; `attach` registers the hook, `detach` removes it."""

    def __init__(self, embeddings: torch.nn.Module, epsilon: float, *, method: str = "fgm", steps: int = 1,
                 step_size: float | None = None, seed: int = 0) -> None:
        self.embeddings = embeddings
        self.epsilon = epsilon
        self.method = method
        self.steps = steps
        self.step_size = step_size if step_size is not None else default_step_size(epsilon, steps)
        self.seed = seed
        self._handle = None
        self._clean: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None
        self._start = None  # FreeLB: makes the first perturbation from the next forward's clean embeddings
        self.last_delta_norms: torch.Tensor | None = None  # each text's final |delta| / |embeddings| (tests, logs)

    @property
    def replaces_clean_pass(self) -> bool:
        """FreeLB's K perturbed passes are the whole step: the loop runs no clean pass of its own."""
        return self.method == "freelb"

    @property
    def passes_per_step(self) -> int:
        """Forward and backward passes one batch costs (plain training: 1)."""
        return {"fgm": 2, "pgd": self.steps + 1, "freelb": self.steps}[self.method]

    def attach(self) -> EmbeddingAdversary:
        self._handle = self.embeddings.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._clean = self._delta = None

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self._start is not None:
            self._delta, self._start = self._start(output.detach()), None
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

    def step(self, loss_fn: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
             active: torch.Tensor, step: int = 0) -> float | None:
        """The adversarial part of one training step on one batch. `loss_fn` runs the model on the
        batch and returns its loss; `backward(loss)` accumulates the weights' gradients (the loop's
        scaling for accumulation included); `active` is the attention mask; `step` seeds FreeLB's
        random start. FGM and PGD run after the clean pass's backward and return None; FreeLB runs
        instead of it and returns the mean of its passes' losses (the step's loss to report)."""
        active = active.float()
        if self.method == "fgm":
            with self.perturbed():
                backward(loss_fn())
            return None
        if self.method == "pgd":
            return self._pgd(loss_fn, backward, active)
        if self.method == "freelb":
            return self._freelb(loss_fn, backward, active, step)
        raise ValueError(f"unknown adversarial method {self.method!r}")

    def _pgd(self, loss_fn, backward, active) -> None:
        clean, self._clean = self._clean, None
        if clean is None or clean.grad is None:
            raise RuntimeError("PGD needs a clean forward and backward pass first")
        embeds = clean.detach()
        norm = text_norms(embeds, active)
        radius, length = self.epsilon * norm, self.step_size * norm
        delta = project(ascend(torch.zeros_like(embeds), clean.grad.detach(), length, active), radius)
        try:
            for _ in range(self.steps - 1):  # each: the gradient at the current point, for delta only
                self._delta = delta.requires_grad_()
                (grad,) = torch.autograd.grad(loss_fn(), delta)
                delta = project(ascend(delta.detach(), grad, length, active), radius)
            self._delta = delta.detach()
            backward(loss_fn())  # the weights train on the strongest perturbation found
        finally:
            self._delta = None
        self.last_delta_norms = delta.detach().float().flatten(1).norm(dim=1) / norm.clamp_min(1e-12)
        return None

    def _freelb(self, loss_fn, backward, active, step: int) -> float:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        geometry: dict = {}

        def start(embeds: torch.Tensor) -> torch.Tensor:
            norm = text_norms(embeds, active)
            geometry.update(norm=norm, radius=self.epsilon * norm, length=self.step_size * norm)
            return random_start(embeds, active, geometry["radius"], generator).requires_grad_()

        total = 0.0
        self._start = start
        try:
            for k in range(self.steps):
                loss = loss_fn()
                backward(loss / self.steps)  # the weights get the mean of the K passes' gradients
                total += float(loss.detach())
                delta = self._delta
                if k + 1 < self.steps:
                    if delta.grad is None:
                        raise RuntimeError("FreeLB: the perturbation got no gradient (is the loss built on the model's output?)")
                    moved = project(ascend(delta.detach(), delta.grad, geometry["length"], active), geometry["radius"])
                    self._delta = moved.requires_grad_()
            final = self._delta.detach()
        finally:
            self._delta = self._start = None
            self._clean = None
        self.last_delta_norms = final.float().flatten(1).norm(dim=1) / geometry["norm"].clamp_min(1e-12)
        return total / self.steps


def default_step_size(epsilon: float, steps: int) -> float:
    """Each ascent step's length when the config leaves it out: 2 epsilon / K, so that K steps can
    cross the ball and a turning gradient still reaches its edge (the projection stops it there)."""
    return 2.0 * epsilon / max(steps, 1)


def rdrop_divergence(a: torch.Tensor, b: torch.Tensor, problem_type: str) -> torch.Tensor:
    """R-Drop's divergence between two passes' logits (batch, outputs), per text, averaged: the mean
    of KL(p_a || p_b) and KL(p_b || p_a) for classes; the same per label for multi-label, each label a
    Bernoulli; the squared difference for regression. Zero when the passes agree."""
    a, b = a.float(), b.float()
    if problem_type == "regression":
        return ((a - b) ** 2).sum(-1).mean()
    if problem_type == "multi_label_classification":
        la, lb = torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(b)
        na, nb = torch.nn.functional.logsigmoid(-a), torch.nn.functional.logsigmoid(-b)
        pa, pb = la.exp(), lb.exp()
        kl_ab = pa * (la - lb) + (1 - pa) * (na - nb)
        kl_ba = pb * (lb - la) + (1 - pb) * (nb - na)
        return (0.5 * (kl_ab + kl_ba)).sum(-1).mean()
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return (0.5 * (kl_ab + kl_ba)).mean()


def rdrop_loss(logits: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], alpha: float,
               problem_type: str) -> torch.Tensor:
    """The R-Drop loss from the logits of the batch doubled ([batch; batch], two dropout masks):
    the two halves' task losses averaged, plus alpha/2 times their divergence (the paper's loss
    halved: see the module's docstring)."""
    first, second = logits.chunk(2)
    return 0.5 * (loss_fn(first) + loss_fn(second)) + 0.5 * alpha * rdrop_divergence(first, second, problem_type)

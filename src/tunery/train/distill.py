"""Knowledge distillation as a training objective: the maths as plain functions, and `Distiller`,
which the training loop asks for a batch's loss instead of the task's own.

Hinton et al. (2015): the student matches the teacher's softened distribution, loss
alpha * CE(gold) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)) (T^2 keeps the soft
term's gradients on the hard term's scale). Rows with no gold label (augmented or unlabelled text
the teacher labelled) take the teacher's term alone. Multi-label: binary cross-entropy against the
teacher's tempered sigmoids; regression: squared error to the teacher's prediction.

Where teacher and student read the same token ids and have the same hidden size (a student built
from the teacher's lower layers, `student_from_teacher`), TinyBERT's intermediate terms (Jiao et al.
2020) are added: the MSE between each student layer's hidden states and those of the teacher layer
it stands for (`layer_map`), and between their attention maps, over the unpadded tokens. That needs
the teacher's forward pass on every batch; the logits-only objective uses logits computed once.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from tunery.layers import encoder_layers


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, problem_type: str) -> torch.Tensor:
    """The teacher's term per row (B,): T^2 * KL(teacher || student) of the tempered softmaxes;
    multi-label T^2 * BCE(student / T, sigmoid(teacher / T)) summed over labels less the teacher's
    entropy (so it is 0 when they agree); regression the squared difference."""
    s, t = student.float(), teacher.float()
    if problem_type == "regression":
        return (s.reshape(len(s), -1)[:, 0] - t.reshape(len(t), -1)[:, 0]) ** 2
    T = temperature
    if problem_type == "multi_label_classification":
        p = torch.sigmoid(t / T)
        bce = F.binary_cross_entropy_with_logits(s / T, p, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(t / T, p, reduction="none")
        return T * T * (bce - entropy).sum(dim=-1)
    log_p_t = F.log_softmax(t / T, dim=-1)
    log_p_s = F.log_softmax(s / T, dim=-1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)


def gold_rows(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The gold-label loss per row (B,): cross-entropy, binary cross-entropy summed over labels, or
    the squared error."""
    logits = logits.float()
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits, labels, reduction="none")
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").sum(dim=-1)
    return (logits.reshape(len(logits), -1)[:, 0] - labels) ** 2


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher layer each student layer 1..S stands for (uniform, last to last): S=3, T=6 ->
    [2, 4, 6]. Index 0 (the embeddings) maps to 0."""
    return [round(j * teacher_layers / student_layers) for j in range(1, student_layers + 1)]


def intermediate_loss(student_out, teacher_out, mask: torch.Tensor, mapping: list[int], *,
                      hidden_weight: float, attention_weight: float) -> torch.Tensor:
    """Hidden-state MSE (embeddings and each mapped layer) and attention-map MSE (each mapped layer),
    over unpadded tokens. `student_out`/`teacher_out`: outputs with hidden_states (L + 1 of (B, T, H))
    and attentions (L of (B, heads, T, T)); `mask`: (B, T) attention mask."""
    m = mask.float()
    tokens = m.sum().clamp(min=1.0)
    loss = student_out.hidden_states[0].new_zeros(())
    if hidden_weight:
        pairs = [(0, 0)] + [(j + 1, t) for j, t in enumerate(mapping)]
        for j, t in pairs:
            diff = (student_out.hidden_states[j].float() - teacher_out.hidden_states[t].float()) ** 2
            loss = loss + hidden_weight * (diff.mean(dim=-1) * m).sum() / tokens / len(pairs)
    if attention_weight and student_out.attentions is not None and teacher_out.attentions is not None:
        pair_mask = m[:, None, :, None] * m[:, None, None, :]  # (B, 1, T, T): real query and key tokens
        for j, t in enumerate(mapping):
            diff = (student_out.attentions[j].float() - teacher_out.attentions[t - 1].float()) ** 2
            heads = diff.shape[1]
            loss = loss + attention_weight * (diff * pair_mask).sum() / (pair_mask.sum() * heads).clamp(min=1.0) \
                / len(mapping)
    return loss


def student_from_teacher(teacher, layers: int):
    """A copy of the teacher keeping its embeddings, its lower `layers` encoder layers, the
    mean-pooling layer tunery adds last (where it has one) and its classification head: a shallower
    model that starts close to the teacher (DistilBERT's and TinyBERT's initialisation)."""
    stack = encoder_layers(teacher)
    if stack is None:
        raise ValueError(f"distill.layers {layers}: {type(teacher).__name__} has no BERT-layout encoder "
                         "layers to keep; set distill.layers: null")
    pooling = getattr(teacher.config, "tunery_pooling", "cls") == "mean"
    depth = len(stack) - (1 if pooling else 0)
    if not 1 <= layers < depth:
        raise ValueError(f"distill.layers {layers}: the teacher has {depth} encoder layers"
                         + (" (plus its mean-pooling layer)" if pooling else "") + f"; choose 1 to {depth - 1}")
    student = copy.deepcopy(teacher)
    kept = list(range(layers)) + ([len(stack) - 1] if pooling else [])
    new = torch.nn.ModuleList([encoder_layers(student)[i] for i in kept])
    student.base_model.encoder.layer = new
    for index, layer in enumerate(new):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    student.config.num_hidden_layers = len(kept)
    return student


class Distiller:
    """The batch loss of distillation. Rows `0 .. n_gold - 1` of the training split have gold
    labels; later rows (augmented, unlabelled) only the teacher's. `teacher_logits`: (N, C) for every
    training row, computed once (regression: already on the student's normalised scale). With a
    `teacher` model the intermediate terms are added (its forward pass on every batch)."""

    def __init__(self, teacher_logits: np.ndarray, *, n_gold: int, alpha: float, temperature: float,
                 problem_type: str, teacher=None, mapping: list[int] | None = None, hidden_weight: float = 1.0,
                 attention_weight: float = 1.0) -> None:
        self.teacher_logits = torch.as_tensor(teacher_logits, dtype=torch.float32)
        self.n_gold = n_gold
        self.alpha = alpha
        self.temperature = temperature
        self.problem_type = problem_type
        self.teacher = teacher
        self.mapping = mapping
        self.hidden_weight = hidden_weight
        self.attention_weight = attention_weight

    @property
    def intermediate(self) -> bool:
        return self.teacher is not None

    def loss(self, model, batch: dict, idx: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the student on `batch`, the rows `idx` of the training split."""
        out = model(**batch, output_hidden_states=self.intermediate, output_attentions=self.intermediate)
        logits = out.logits
        teacher = self.teacher_logits[torch.as_tensor(idx)].to(logits.device)
        soft = kd_rows(logits, teacher, temperature=self.temperature, problem_type=self.problem_type)
        gold = torch.as_tensor(idx < self.n_gold, device=logits.device)
        hard = gold_rows(logits, labels, self.problem_type)
        rows = torch.where(gold, self.alpha * hard + (1 - self.alpha) * soft, soft)
        loss = rows.mean()
        if self.intermediate:
            with torch.no_grad():
                t_out = self.teacher(**batch, output_hidden_states=True, output_attentions=True)
            loss = loss + intermediate_loss(out, t_out, batch["attention_mask"], self.mapping,
                                            hidden_weight=self.hidden_weight, attention_weight=self.attention_weight)
        return loss, logits

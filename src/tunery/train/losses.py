"""Multi-label losses: plain functions of logits and 0/1 targets, each averaged over every
(row, label) cell like `binary_cross_entropy_with_logits`.

- bce: binary cross-entropy, the positives of each label weighted by `pos_weight`.
- focal: Lin et al. 2017, each cell's cross-entropy scaled by (1 - p_t)^gamma (gamma 2), so cells the
  model already gets right (mostly the easy negatives of rare labels) weigh little.
- asl: the asymmetric loss of Ridnik et al. 2021 ("Asymmetric Loss for Multi-Label Classification"):
  positives plain (gamma+ 0), negatives focused (gamma- 4) and their probability shifted down by a
  margin (0.05), so very easy negatives give no gradient at all and mislabelled negatives weigh less.
The paper's defaults are used. `pos_weight` multiplies the positive term in every variant.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

MULTILABEL_LOSSES = ("bce", "focal", "asl")
FOCAL_GAMMA = 2.0
ASL_GAMMA_POS, ASL_GAMMA_NEG, ASL_MARGIN = 0.0, 4.0, 0.05


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce",
                    pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of `logits` (rows x labels) against `targets` (0/1 floats of the same shape)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    p = torch.sigmoid(logits)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    if kind == "focal":
        pos = (1 - p) ** FOCAL_GAMMA * log_p
        neg = p ** FOCAL_GAMMA * log_not_p
    elif kind == "asl":
        p_shifted = (p - ASL_MARGIN).clamp(min=0)
        pos = (1 - p) ** ASL_GAMMA_POS * log_p
        neg = p_shifted ** ASL_GAMMA_NEG * torch.log((1 - p_shifted).clamp(min=1e-8))
    else:
        raise ValueError(f"multi-label loss {kind!r} is not one of {', '.join(MULTILABEL_LOSSES)}")
    if pos_weight is not None:
        pos = pos * pos_weight
    return -(targets * pos + (1 - targets) * neg).mean()

"""`focal`: focal loss (Lin et al. 2017), -(1 - p_y)^gamma log p_y, mean over the batch.

Down-weights easy (mostly head-class) samples; gamma = 0 is plain cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl


@dataclass
class FocalConfig:
    gamma: float = 2.0

    def validate(self) -> None:
        if self.gamma < 0:
            raise ValueError("gamma must be >= 0")


def focal_per_sample(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss (shared with `cb`, whose base loss may be focal)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    if gamma == 0:
        return -logp
    return -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp


class FocalLoss(nn.Module):
    def __init__(self, options: FocalConfig | None = None, class_counts: list[int] | None = None):
        super().__init__()
        self.gamma = (options or FocalConfig()).gamma

    def forward(self, logits, targets):
        return focal_per_sample(logits, targets, self.gamma).mean()


@hookimpl
def register_losses(register):
    register("focal", FocalLoss, config=FocalConfig, description="Focal loss -(1-p_y)^gamma log p_y (Lin et al. 2017).")

"""`ce`: plain softmax cross-entropy, the baseline every long-tail loss is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl


@dataclass
class CEConfig:
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")


class CrossEntropy(nn.Module):
    def __init__(self, options: CEConfig | None = None, class_counts: list[int] | None = None):
        super().__init__()
        self.label_smoothing = (options or CEConfig()).label_smoothing

    def forward(self, logits, targets):
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


@hookimpl
def register_losses(register):
    register("ce", CrossEntropy, config=CEConfig, description="Softmax cross-entropy (no long-tail correction).")

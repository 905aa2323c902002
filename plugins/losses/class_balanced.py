"""`cb`: class-balanced loss (Cui et al. 2019): base loss weighted by the inverse effective number.

w_k = (1 - beta) / (1 - beta^N_k), normalised so the weights sum to K; the batch loss is
mean_i w_{y_i} * base_i (a plain mean, so equal per-rank batches average exactly under DDP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl
from hgltr_plugins.losses._prior import counts_tensor
from hgltr_plugins.losses.focal import focal_per_sample


@dataclass
class ClassBalancedConfig:
    beta: float = 0.9999
    base: Literal["ce", "focal"] = "ce"
    gamma: float = 2.0  # focal base only

    def validate(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise ValueError("beta must be in [0, 1)")
        if self.gamma < 0:
            raise ValueError("gamma must be >= 0")


def class_balanced_weights(class_counts, beta: float) -> torch.Tensor:
    """Inverse effective-number weights, summing to the number of classes."""
    counts = counts_tensor(class_counts, "cb")
    if beta == 0.0:
        w = torch.ones_like(counts)
    else:
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w / w.sum() * counts.numel()).float()


class ClassBalancedLoss(nn.Module):
    def __init__(self, options: ClassBalancedConfig | None, class_counts: list[int]):
        super().__init__()
        self.opts = options or ClassBalancedConfig()
        self.register_buffer("weights", class_balanced_weights(class_counts, self.opts.beta), persistent=False)

    def forward(self, logits, targets):
        if self.opts.base == "focal":
            per = focal_per_sample(logits, targets, self.opts.gamma)
        else:
            per = F.cross_entropy(logits.float(), targets, reduction="none")
        return (self.weights.to(logits.device)[targets] * per).mean()


@hookimpl
def register_losses(register):
    register("cb", ClassBalancedLoss, config=ClassBalancedConfig,
             description="Class-balanced loss: CE or focal weighted by inverse effective number (Cui et al. 2019).")

"""`ldam`: label-distribution-aware margin loss (Cao et al. 2019), with optional DRW.

The target logit is lowered by m_y = C / N_y^(1/4) (C chosen so the largest margin is
max_m) and logits are scaled by s. With `drw` the class weights switch from uniform to the
inverse effective number (beta 0.9999) once `drw_start` of the epochs have passed; the engine
calls `set_epoch(epoch, epochs)` on losses that have it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl
from hgltr_plugins.losses._prior import counts_tensor
from hgltr_plugins.losses.class_balanced import class_balanced_weights


@dataclass
class LDAMConfig:
    max_m: float = 0.5
    s: float = 30.0
    drw: bool = False  # deferred re-weighting; off = DRW-free LDAM
    drw_start: float = 0.8  # fraction of the epochs after which DRW weights apply (160/200 in the paper)
    drw_beta: float = 0.9999

    def validate(self) -> None:
        if self.max_m <= 0 or self.s <= 0:
            raise ValueError("max_m and s must be > 0")
        if not 0.0 <= self.drw_start <= 1.0:
            raise ValueError("drw_start is a fraction of the epochs, in [0, 1]")


class LDAMLoss(nn.Module):
    def __init__(self, options: LDAMConfig | None, class_counts: list[int]):
        super().__init__()
        self.opts = options or LDAMConfig()
        counts = counts_tensor(class_counts, "ldam")
        m = 1.0 / counts.pow(0.25)
        self.register_buffer("margins", (m * (self.opts.max_m / m.max())).float(), persistent=False)
        self.register_buffer("drw_weights", class_balanced_weights(class_counts, self.opts.drw_beta), persistent=False)
        self.use_weights = False

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Switch DRW weights on from epoch floor(drw_start * epochs) (0-based)."""
        self.use_weights = bool(self.opts.drw) and epoch >= int(self.opts.drw_start * epochs)

    def forward(self, logits, targets):
        logits = logits.float()
        margin = torch.zeros_like(logits).scatter_(1, targets[:, None], self.margins.to(logits.device)[targets, None])
        weight = self.drw_weights.to(logits.device) if self.use_weights else None
        return F.cross_entropy(self.opts.s * (logits - margin), targets, weight=weight)


@hookimpl
def register_losses(register):
    register("ldam", LDAMLoss, config=LDAMConfig,
             description="LDAM margin loss (Cao et al. 2019), optional deferred re-weighting (DRW).")

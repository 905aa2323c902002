"""`la`: logit-adjusted cross-entropy (Menon et al. 2021), L_cls of HGLTR (METHOD.md, Eq. 5).

CE(l + tau * log q, y) with q the training prior; at inference the raw logits are used, so
the adjustment moves the decision boundaries toward the tail only during training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl
from hgltr_plugins.losses._prior import counts_tensor


@dataclass
class LogitAdjustedConfig:
    tau: float = 1.0


class LogitAdjustedLoss(nn.Module):
    def __init__(self, options: LogitAdjustedConfig | None, class_counts: list[int]):
        super().__init__()
        opts = options or LogitAdjustedConfig()
        counts = counts_tensor(class_counts, "la")
        log_prior = torch.log(counts / counts.sum())
        self.register_buffer("adjustment", (opts.tau * log_prior).float(), persistent=False)

    def forward(self, logits, targets):
        return F.cross_entropy(logits.float() + self.adjustment.to(logits.device), targets)


@hookimpl
def register_losses(register):
    register("la", LogitAdjustedLoss, config=LogitAdjustedConfig,
             description="Logit-adjusted cross-entropy CE(l + tau*log prior, y); HGLTR's default L_cls.")

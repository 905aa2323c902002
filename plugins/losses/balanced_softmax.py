"""`balanced-softmax`: Balanced Softmax (Ren et al. 2020), CE(l + log N_k, y).

Same family as logit adjustment with tau fixed to 1; kept separate because papers report it
under its own name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgltr_cli import hookimpl
from hgltr_plugins.losses._prior import counts_tensor


@dataclass
class BalancedSoftmaxConfig:
    pass


class BalancedSoftmaxLoss(nn.Module):
    def __init__(self, options: BalancedSoftmaxConfig | None, class_counts: list[int]):
        super().__init__()
        self.register_buffer("log_counts", torch.log(counts_tensor(class_counts, "balanced-softmax")).float(),
                             persistent=False)

    def forward(self, logits, targets):
        return F.cross_entropy(logits.float() + self.log_counts.to(logits.device), targets)


@hookimpl
def register_losses(register):
    register("balanced-softmax", BalancedSoftmaxLoss, config=BalancedSoftmaxConfig,
             description="Balanced Softmax: CE(l + log N_k, y) (Ren et al. 2020).")

"""`adapter`: HGLTR's sequential bottleneck adapter on the MLP output of every ViT block.

    m = mlp(ln_2(x));  x = x + m + s * up(relu(down(LN(m))))

down d->r (Kaiming-normal), up r->d (zero-init, so step 0 is the pre-trained function), a
LayerNorm on the input and a learnable scalar s (init 1). Per block: 2d (LN) + (d*r + r) +
(r*d + d) + 1 parameters; ViT-B/16 with r=64: 100,673 per block, 1,208,076 for 12 blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hgltr_cli import hookimpl
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk


@dataclass
class AdapterConfig:
    bottleneck: int = 64  # r: the bottleneck width
    blocks: str = "all"  # which blocks get one: all, last:N, first:N, 0-5, 0,3,11
    scale_init: float = 1.0  # initial value of the learnable scale s

    def validate(self):
        if self.bottleneck < 1:
            raise ValueError("bottleneck must be >= 1")


class BottleneckAdapter(nn.Module):
    """s * up(relu(down(LN(h)))), zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale_init: float = 1.0):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.full((1,), float(scale_init)))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(self.ln(h))))


class Adapter(PeftMethod):
    name = "adapter"
    config_class = AdapterConfig

    def apply(self, trunk: VisionTrunk) -> None:
        self.check_trunk(trunk)
        for i in trunk.select_blocks(self.config.blocks):
            block = trunk.blocks[i]
            block.mlp_adapter = BottleneckAdapter(block.width, self.config.bottleneck, self.config.scale_init)
            self.modules.append(block.mlp_adapter)
        self.applied = True


@hookimpl
def register_peft_methods(register):
    register("adapter", Adapter, config=AdapterConfig,
             description="HGLTR's sequential bottleneck adapter (LN, ReLU, learnable scale) after each MLP")

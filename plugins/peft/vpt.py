"""`vpt-shallow` / `vpt-deep`: learnable prompt tokens appended after the patch tokens.

shallow: `length` tokens appended once, before the first selected block; they then travel
through every block. deep: a fresh set per selected block, replacing the previous block's
prompts. The prompts are dropped after the last block, so pooling (class token or average)
sees the original tokens only. Init: uniform(-v, v), v = sqrt(6 / (3 * patch_area + width)),
as in VPT/LIFT. VPT cannot start at the pre-trained function: the prompts take part in
attention from step 0 (no zero-init leaves the attention weights of the other tokens intact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hgltr_cli import hookimpl
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk


@dataclass
class VPTConfig:
    length: int = 10  # prompt tokens per set
    blocks: str = "all"  # deep: blocks that get a fresh set; shallow: the first selected block

    def validate(self):
        if self.length < 1:
            raise ValueError("length must be >= 1")


class PromptTokens(nn.Module):
    """Appends `length` learnable tokens; with replace=True first drops the previous ones."""

    def __init__(self, length: int, dim: int, patch_area: int, replace: bool):
        super().__init__()
        self.length = length
        self.replace = replace
        self.tokens = nn.Parameter(torch.empty(length, dim))
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))
        nn.init.uniform_(self.tokens, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.replace:
            x = x[:, :-self.length]
        return torch.cat([x, self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)

    def extra_repr(self) -> str:
        return f"length={self.length}, replace={self.replace}"


class DropPrompts(nn.Module):
    """Removes the trailing prompt tokens after the last block (no parameters)."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-self.length]


class _VPT(PeftMethod):
    config_class = VPTConfig
    deep = False

    def apply(self, trunk: VisionTrunk) -> None:
        self.check_trunk(trunk)
        idx = trunk.select_blocks(self.config.blocks)
        if not self.deep:
            idx = idx[:1]
        patch_area = int(trunk.patch_size[0]) * int(trunk.patch_size[1])
        L = self.config.length
        for n, i in enumerate(idx):
            block = trunk.blocks[i]
            block.prompt = PromptTokens(L, block.width, patch_area, replace=n > 0)
            self.modules.append(block.prompt)
        trunk.blocks[-1].post = DropPrompts(L)
        self.applied = True


class VPTShallow(_VPT):
    name = "vpt-shallow"
    deep = False


class VPTDeep(_VPT):
    name = "vpt-deep"
    deep = True


@hookimpl
def register_peft_methods(register):
    register("vpt-shallow", VPTShallow, config=VPTConfig,
             description="Visual prompt tuning, shallow: prompt tokens appended once before the first block")
    register("vpt-deep", VPTDeep, config=VPTConfig,
             description="Visual prompt tuning, deep: fresh prompt tokens at every block")

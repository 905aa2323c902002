"""`lora`: low-rank deltas on the query and value projections of every ViT block.

How LoRA is inserted: each block's attention module (open_clip's `Attention` or
`nn.MultiheadAttention`, both keep q, k, v packed in `in_proj_weight`) is replaced by
:class:`LoRAAttention`, which *reuses* the frozen `in_proj_weight`, `in_proj_bias` and
`out_proj` under their original names (state-dict keys do not change) and adds

    q = x W_q^T + b_q + (1/r) * (x A_q) B_q,      v = x W_v^T + b_v + (1/r) * (x A_v) B_v

before scaled-dot-product attention. A: d x r, Kaiming-uniform; B: r x d, zero (so step 0 is
the pre-trained function); scaling 1/r (LIFT's code). `merge()` folds (1/r) (A B)^T into the
frozen q/v rows of `in_proj_weight` for export; `unmerge()` takes it out again.
Per block 4*d*r parameters: ViT-B/16 with r=64 gives 12 * 196,608 = 2,359,296, plus h_t
395,008 = 2,754,304 (the paper's Table 6: 2.76M).

CNN trunks (timm EfficientNet/MobileNet blocks, e.g. `quickstart-effnet-minilm`): a 1x1
convolution is a linear map over channels applied at every pixel, W: C_out x C_in, so LoRA
applies unchanged: each selected 1x1 conv becomes :class:`LoRAConv1x1`, which keeps the frozen
`weight` under its original key and adds `(1/r_c) (x A) B` per pixel, A: C_in x r_c
(Kaiming-uniform), B: r_c x C_out (zero), r_c = min(rank, C_in, C_out) (a higher rank adds
nothing a full-rank delta could not). `merge()` adds (1/r_c) (A B)^T to the conv weight.
Which convs: option `convs`, default `pw,pwl`: `conv_pw` (an inverted-residual block's
expansion, or a depthwise-separable block's projection) and `conv_pwl` (the inverted-residual
projection back to the residual stream). Together they hold all of a block's channel mixing;
the depthwise 3x3 convs only filter each channel spatially (9 weights per channel) and are not
linear maps over channels, so they stay frozen. `--set peft.convs=pwl` adapts only the
projections (about half the parameters: 663,424 instead of 1,298,560 on
EfficientNet-Lite0 at rank 64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from hgltr_cli import hookimpl
from hgltr_cli.errors import HgltrError
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk, pointwise_convs, qkv_projection, sdpa_attention

CONV_NAMES = {"pw": "conv_pw", "pwl": "conv_pwl"}


@dataclass
class LoRAConfig:
    rank: int = 64  # r; Table 6's 2.76M is rank 64 on q and v (CNN convs: min(r, C_in, C_out))
    blocks: str = "all"
    convs: str = "pw,pwl"  # CNN trunks only: which 1x1 convs of each block (pw, pwl)

    def validate(self):
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        parts = [p.strip() for p in str(self.convs).split(",") if p.strip()]
        bad = [p for p in parts if p not in CONV_NAMES]
        if bad or not parts:
            raise ValueError(f"convs must be a comma list of {', '.join(CONV_NAMES)} (got {self.convs!r})")

    def conv_names(self) -> list[str]:
        return [CONV_NAMES[p.strip()] for p in str(self.convs).split(",") if p.strip()]


class LowRank(nn.Module):
    """x -> (x A) B * scaling."""

    def __init__(self, dim_in: int, dim_out: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(dim_in, rank))
        self.B = nn.Parameter(torch.zeros(rank, dim_out))
        self.scaling = 1.0 / rank
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A) @ self.B * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The same map as an nn.Linear weight (out x in)."""
        return (self.A @ self.B).t() * self.scaling


class LoRAAttention(nn.Module):
    """Multi-head self-attention with LoRA on q and v; frozen weights keep their original names."""

    def __init__(self, attn: nn.Module, rank: int):
        super().__init__()
        _check_plain_attention(attn)
        weight, bias, out_proj, heads = qkv_projection(attn)
        self.in_proj_weight = weight
        self.in_proj_bias = bias
        self.out_proj = out_proj
        self.num_heads = heads
        self.dim = weight.shape[1]
        self.lora_q = LowRank(self.dim, self.dim, rank)
        self.lora_v = LowRank(self.dim, self.dim, rank)
        self.merged = False

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if not self.merged:
            q = q + self.lora_q(x)
            v = v + self.lora_v(x)
        return sdpa_attention(x, q, k, v, self.num_heads, self.out_proj, attn_mask)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        d = self.dim
        self.in_proj_weight[:d] += self.lora_q.delta_weight().to(self.in_proj_weight.dtype)
        self.in_proj_weight[2 * d:] += self.lora_v.delta_weight().to(self.in_proj_weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        d = self.dim
        self.in_proj_weight[:d] -= self.lora_q.delta_weight().to(self.in_proj_weight.dtype)
        self.in_proj_weight[2 * d:] -= self.lora_v.delta_weight().to(self.in_proj_weight.dtype)
        self.merged = False


class LoRAConv1x1(nn.Module):
    """A frozen 1x1 convolution plus a LoRA delta over channels; `weight` keeps its key."""

    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__()
        self.weight = conv.weight  # frozen (C_out, C_in, 1, 1)
        self.bias = conv.bias
        self.padding = conv.padding
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.rank = min(rank, self.in_channels, self.out_channels)
        self.lora = LowRank(self.in_channels, self.out_channels, self.rank)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        if self.merged:
            return y
        return y + self.lora(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # positive axes: ONNX-traceable

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight[:, :, 0, 0] += self.lora.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight[:, :, 0, 0] -= self.lora.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rank={self.rank}"


def _check_plain_attention(attn: nn.Module) -> None:
    """LoRAAttention recomputes attention itself: refuse variants it would silently change."""
    if isinstance(attn, nn.MultiheadAttention):
        if not attn.batch_first or not attn._qkv_same_embed_dim:
            raise HgltrError("LoRA supports batch-first self-attention only.")
        return
    extras = [n for n in ("logit_scale", "head_scale") if getattr(attn, n, None) is not None]
    extras += [n for n in ("ln_q", "ln_k", "ln_inner") if not isinstance(getattr(attn, n, nn.Identity()), nn.Identity)]
    if extras:
        raise HgltrError(f"LoRA does not support attention with {', '.join(extras)} (scaled-cosine / qk-norm variants).",
                         "Use the adapter or lift PEFT method for this model.")


class LoRA(PeftMethod):
    name = "lora"
    config_class = LoRAConfig
    mergeable = True
    supports_cnn = True

    def apply(self, trunk: VisionTrunk) -> None:
        self.check_trunk(trunk)
        for i in trunk.select_blocks(self.config.blocks):
            block = trunk.blocks[i]
            if trunk.kind == "vit":
                block.attn = LoRAAttention(block.attn, self.config.rank)
                self.modules.append(block.attn)
                continue
            for name, conv in pointwise_convs(block, self.config.conv_names()):
                wrapped = LoRAConv1x1(conv, self.config.rank)
                setattr(block, name, wrapped)
                self.modules.append(wrapped)
        if not self.modules:
            raise HgltrError(f"LoRA found no {'/'.join(self.config.conv_names())} 1x1 convolution in the selected "
                             f"blocks of {trunk.model_name!r}.", "Pick other blocks or --set peft.convs=pw,pwl.")
        self.applied = True

    def merge(self) -> None:
        for mod in self.modules:
            mod.merge()

    def unmerge(self) -> None:
        for mod in self.modules:
            mod.unmerge()


@hookimpl
def register_peft_methods(register):
    register("lora", LoRA, config=LoRAConfig, description="LoRA (rank r, scaling 1/r) on ViT query/value projections or CNN 1x1 convolutions")

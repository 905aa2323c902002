"""`adapter`: HGLTR's sequential bottleneck adapter, on ViT blocks and on CNN blocks.

ViT (the paper's adapter), on the MLP output of every block:

    m = mlp(ln_2(x));  x = x + m + s * up(relu(down(LN(m))))

down d->r (Kaiming-normal), up r->d (zero-init, so step 0 is the pre-trained function), a
LayerNorm on the input and a learnable scalar s (init 1). Per block: 2d (LN) + (d*r + r) +
(r*d + d) + 1 parameters; ViT-B/16 with r=64: 100,673 per block, 1,208,076 for 12 blocks.

CNN trunks (timm EfficientNet/MobileNet blocks, e.g. `quickstart-effnet-minilm`): a residual
adapter after each block, applied at every pixel over the channels (down/up are 1x1 convs,
written as Linear layers on channels-last views):

    y = block(x);  y = y + s * up(relu(down(LN_c(y))))

C = the block's output channels, r_c = min(bottleneck, C) (a wider bottleneck than the input
adds nothing), LN_c a LayerNorm over the C channels of each pixel. Same zero-init up, so step
0 is still the pre-trained network (tested). Why the LayerNorm is kept on CNNs too: a block's
output is its frozen BatchNorm's affine output (no activation); its per-pixel RMS over channels
is not 1 but about 3 to 8 depending on the block (EfficientNet-Lite0 on scikit-image's chelsea,
224 px). LN_c gives every adapter unit-scale input, as the ViT adapter has, so one learning rate
and one `down` initialisation suit all blocks (`--set peft.norm=none` drops it). Per block:
2C + (C*r_c + r_c) + (r_c*C + C) + 1; EfficientNet-Lite0 with r=64: 16 blocks, 228,496 in all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hgltr_cli import hookimpl
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk, add_output_branch, block_out_channels

NORMS = ("layernorm", "none")


@dataclass
class AdapterConfig:
    bottleneck: int = 64  # r: the bottleneck width (CNN blocks: min(r, channels))
    blocks: str = "all"  # which blocks get one: all, last:N, first:N, 0-5, 0,3,11
    scale_init: float = 1.0  # initial value of the learnable scale s
    norm: str = "layernorm"  # the adapter's input norm: layernorm (over channels) or none

    def validate(self):
        if self.bottleneck < 1:
            raise ValueError("bottleneck must be >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}")


class BottleneckAdapter(nn.Module):
    """s * up(relu(down(LN(h)))) over the last dimension, zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale_init: float = 1.0, norm: str = "layernorm"):
        super().__init__()
        self.ln = nn.LayerNorm(dim) if norm == "layernorm" else nn.Identity()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.full((1,), float(scale_init)))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(self.ln(h))))


class ChannelAdapter(BottleneckAdapter):
    """The same bottleneck on (N, C, H, W) feature maps, per pixel over the channels.

    The channels-last view costs no copy when the trunk runs channels_last (the quickstart model
    does), and the result comes back in the input's layout."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # explicit permutations: ONNX rejects the negative axes movedim(-1, 1) would trace to
        return super().forward(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Adapter(PeftMethod):
    name = "adapter"
    config_class = AdapterConfig
    supports_cnn = True

    def apply(self, trunk: VisionTrunk) -> None:
        self.check_trunk(trunk)
        c = self.config
        for i in trunk.select_blocks(c.blocks):
            block = trunk.blocks[i]
            if trunk.kind == "vit":
                block.mlp_adapter = BottleneckAdapter(block.width, c.bottleneck, c.scale_init, c.norm)
                self.modules.append(block.mlp_adapter)
            else:
                channels = block_out_channels(block)
                adapter = ChannelAdapter(channels, min(c.bottleneck, channels), c.scale_init, c.norm)
                add_output_branch(block, adapter, "peft_adapter")
                self.modules.append(adapter)
        self.applied = True


@hookimpl
def register_peft_methods(register):
    register("adapter", Adapter, config=AdapterConfig,
             description="HGLTR's bottleneck adapter (LN, ReLU, learnable scale): after each ViT MLP or CNN block")

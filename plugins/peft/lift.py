"""`lift`: LIFT's AdaptFormer, a parallel bottleneck beside the MLP of every ViT block.

    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)) + s * up(relu(down(LN(x))))

The adapter sees the block's residual stream *before* ln_2 (as in LIFT's code), not the MLP
output. up is zero-initialised, so step 0 is the pre-trained function. With bottleneck=0 the
width follows LIFT's rule r = 2^floor(log2(K / (2L))) (K classes, L blocks): 32 for
ImageNet-LT on ViT-B/16, giving 617,868 PEFT parameters (LIFT reports 0.62M).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hgltr_cli import hookimpl
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk

try:  # the same bottleneck module as the sequential adapter; only where it is fed differs
    from hgltr_plugins.peft.adapter import BottleneckAdapter
except ImportError:  # pragma: no cover - plugins installed under another name
    from .adapter import BottleneckAdapter


@dataclass
class LiftConfig:
    bottleneck: int = 0  # r; 0 = LIFT's rule 2^floor(log2(K / (2 * blocks)))
    blocks: str = "all"
    scale_init: float = 1.0

    def validate(self):
        if self.bottleneck < 0:
            raise ValueError("bottleneck must be >= 0 (0 = LIFT's automatic rule)")


def lift_bottleneck(num_classes: int, n_blocks: int) -> int:
    """LIFT's default adapter width: a power of two that keeps PEFT smaller than the classifier."""
    if num_classes <= 0 or n_blocks <= 0:
        return 1
    return 2 ** max(0, int(math.log2(num_classes / (n_blocks * 2))))


class Lift(PeftMethod):
    name = "lift"
    config_class = LiftConfig

    def apply(self, trunk: VisionTrunk) -> None:
        self.check_trunk(trunk)
        idx = trunk.select_blocks(self.config.blocks)
        r = self.config.bottleneck or lift_bottleneck(trunk.num_classes, trunk.n_blocks)
        self.bottleneck = r
        for i in idx:
            block = trunk.blocks[i]
            block.parallel_adapter = BottleneckAdapter(block.width, r, self.config.scale_init)
            self.modules.append(block.parallel_adapter)
        self.applied = True

    def describe(self) -> dict:
        out = super().describe()
        if getattr(self, "bottleneck", None):
            out["bottleneck_used"] = self.bottleneck
        return out


@hookimpl
def register_peft_methods(register):
    register("lift", Lift, config=LiftConfig,
             description="LIFT's AdaptFormer: parallel bottleneck adapter beside each MLP, fed with the block input")

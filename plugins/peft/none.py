"""`none`: no PEFT module; the backbone stays exactly as loaded and only h_t and the classifier train."""
from __future__ import annotations

from dataclasses import dataclass

from hgltr_cli import hookimpl
from hgltr_cli.model.peft_api import PeftMethod, VisionTrunk


@dataclass
class NoneConfig:
    pass


class NoPeft(PeftMethod):
    name = "none"
    config_class = NoneConfig
    supported_trunks = ("vit", "timm", "resnet", "other")

    def apply(self, trunk: VisionTrunk) -> None:
        self.applied = True


@hookimpl
def register_peft_methods(register):
    register("none", NoPeft, config=NoneConfig, description="No PEFT module: train the classifier (and h_t) only")

"""Model assembly: frozen open_clip backbone, PEFT modules, text prototypes, h_t and h_m.

Public API (importing this package imports torch; the CLI imports it lazily):
    build_model(cfg, classes, device) -> HGLTRModel
    model_summary(cfg, classes=None) -> dict          (for `hgltr train --dry-run`)
    load_backbone(name, pretrained, ...) -> Backbone
    PeftMethod, VisionTrunk, PeftViTBlock             (for PEFT plugins)
"""
from hgltr_cli.model.backbone import Backbone, load_backbone
from hgltr_cli.model.heads import CosineClassifier, LinearClassifier, TextAligner, text_init_weight
from hgltr_cli.model.hgltr_model import HGLTRModel, build_model, model_summary, prepare_trunk
from hgltr_cli.model.peft_api import PeftMethod, PeftViTBlock, VisionTrunk, unsupported_trunk
from hgltr_cli.model.text import encode_prompts, prompts_for

__all__ = [
    "Backbone", "load_backbone", "CosineClassifier", "LinearClassifier", "TextAligner", "text_init_weight",
    "HGLTRModel", "build_model", "model_summary", "prepare_trunk", "PeftMethod", "PeftViTBlock", "VisionTrunk",
    "unsupported_trunk", "encode_prompts", "prompts_for",
]

"""`hgltr-tiny-vit`: a tiny random-init open_clip CLIP (ViT image tower) for tests and smoke runs.

32 px images, 8 px patches (16 tokens + class token), width 64, 2 blocks; text width 64, 2 blocks;
embedding 32. Real CLIP weights do not exist for it: use `--pretrained none` or a file saved from it.
"""
from __future__ import annotations

from hgltr_cli import hookimpl

TINY_VIT_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
}


def tiny_vit_config() -> dict:
    """The open_clip model config (hgltr builds it like a built-in architecture)."""
    import copy
    return copy.deepcopy(TINY_VIT_CFG)


@hookimpl
def register_models(register):
    register("hgltr-tiny-vit", tiny_vit_config, default_pretrained="none",
             description="Tiny random-init open_clip ViT CLIP (32px, 2+2 blocks) for tests and smoke runs")

"""HGLTRModel: frozen CLIP + PEFT modules + h_t + h_m, and the builders the CLI and engine call."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hgltr_cli.errors import HgltrError
from hgltr_cli.model.backbone import Backbone, cache_root, load_backbone
from hgltr_cli.model.heads import CosineClassifier, LinearClassifier, TextAligner, text_init_weight
from hgltr_cli.model.peft_api import PeftMethod, PeftViTBlock, VisionTrunk
from hgltr_cli.model.text import encode_prompts, prompts_for


# ----------------------------------------------------------------------------- trunk adaptation

def prepare_trunk(backbone: Backbone, num_classes: int) -> tuple[VisionTrunk, str]:
    """Describe the image encoder for PEFT; for ViTs swap each block into a PeftViTBlock.

    Returns (trunk, feature mode): 'vit' (pooled token after ln_post, before proj),
    'timm-linear' (timm trunk's pooled features, before the linear projection) or 'embedding'
    (the tower's output; P = identity).
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = backbone.model.visual
    if isinstance(visual, VisionTransformer):
        tr = visual.transformer
        if not getattr(tr, "batch_first", True):
            raise HgltrError("open_clip ViTs with batch_first=False are not supported.")
        if visual.attn_pool is not None:
            raise HgltrError("ViTs with an attentional pooler (CoCa) are not supported.")
        for i, blk in enumerate(tr.resblocks):
            if not isinstance(blk, PeftViTBlock):
                tr.resblocks[i] = PeftViTBlock(blk)
        blocks = list(tr.resblocks)
        trunk = VisionTrunk(kind="vit", visual=visual, model_name=backbone.name, blocks=blocks, width=tr.width,
                            num_heads=blocks[0].attn.num_heads, patch_size=tuple(visual.patch_size),
                            num_classes=num_classes, detail=f"{len(blocks)} blocks, width {tr.width}")
        if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
            return trunk, "vit-fallback"
        return trunk, "vit"
    if isinstance(visual, TimmModel):
        name = getattr(visual.trunk, "default_cfg", {}).get("architecture", type(visual.trunk).__name__)
        trunk = VisionTrunk(kind="timm", visual=visual, model_name=backbone.name, num_classes=num_classes,
                            detail=f"timm {name}")
        proj = getattr(visual.head, "proj", None)
        only_proj = all(n in ("drop", "proj") for n, _ in visual.head.named_children())
        return trunk, ("timm-linear" if isinstance(proj, nn.Linear) and only_proj else "embedding")
    kind = "resnet" if isinstance(visual, ModifiedResNet) else "other"
    return VisionTrunk(kind=kind, visual=visual, model_name=backbone.name, num_classes=num_classes,
                       detail=type(visual).__name__), "embedding"


def _visual_projection(visual: nn.Module, mode: str, d_t: int) -> torch.Tensor:
    """P (d_m x d_t): maps image features z_i to CLIP's joint space."""
    if mode.startswith("vit"):
        return visual.proj.detach().clone().float()
    if mode == "timm-linear":
        return visual.head.proj.weight.detach().t().clone().float()
    return torch.eye(d_t)


# ----------------------------------------------------------------------------- the model

class HGLTRModel(nn.Module):
    """forward(images) -> (logits, features z_i). Only PEFT modules, h_t and h_m are learnable."""

    def __init__(self, backbone: Backbone, peft: PeftMethod, trunk: VisionTrunk, feature_mode: str,
                 text_features: Optional[torch.Tensor], num_classes: int, classifier: str = "linear",
                 cosine_scale: float = 25.0, prompts: Optional[Sequence[str]] = None):
        super().__init__()
        self.clip = backbone.model
        self.backbone_info = backbone
        self.peft = peft
        self.trunk_kind = trunk.kind
        self.feature_mode = feature_mode
        self.prompts = list(prompts or [])
        d_t = _text_dim(self.clip)
        P = _visual_projection(self.clip.visual, feature_mode, d_t)
        d_m = P.shape[0]
        self.d_m, self.d_t, self.num_classes = d_m, d_t, num_classes
        self.register_buffer("visual_projection", P, persistent=False)
        self.text_initialised = text_features is not None
        z_t = text_features.float() if text_features is not None else torch.zeros(num_classes, d_t)
        if z_t.shape != (num_classes, d_t):
            raise HgltrError(f"text features have shape {tuple(z_t.shape)}, expected ({num_classes}, {d_t}).")
        self.register_buffer("text_features", z_t, persistent=False)
        self.aligner = TextAligner(d_t, d_m)
        if classifier == "cosine":
            self.classifier = CosineClassifier(d_m, num_classes, cosine_scale)
        elif classifier == "linear":
            self.classifier = LinearClassifier(d_m, num_classes)
        else:
            raise HgltrError(f"unknown classifier {classifier!r}; expected 'linear' or 'cosine'.")
        if self.text_initialised:
            self.classifier.init_from(text_init_weight(z_t, P))

    # -- forward
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """z_i: the pooled token after the final LayerNorm, before CLIP's projection."""
        visual = self.clip.visual
        if self.feature_mode == "vit":
            x = visual._embeds(images)
            x = visual.transformer(x)
            pooled, _ = visual._pool(x)
            return pooled
        if self.feature_mode == "vit-fallback":  # open_clip without _embeds/_pool: run with proj disabled
            proj = visual.proj
            visual.proj = None
            try:
                out = visual(images)
            finally:
                visual.proj = proj
            return out[0] if isinstance(out, tuple) else out
        if self.feature_mode == "timm-linear":
            return visual.trunk(images)
        out = visual(images)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode_image(images)
        return self.classifier(z), z

    def aligned_text(self) -> torch.Tensor:
        """h_t(z_t): (K, d_m), the text prototypes in image-feature space (for L_mse)."""
        return self.aligner(self.text_features)

    @torch.no_grad()
    def zero_shot_logits(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's own zero-shot scores cos(z_i P, z_t) (a reference for the step-0 classifier)."""
        z = self.encode_image(images).float() @ self.visual_projection
        return nn.functional.normalize(z, dim=-1) @ nn.functional.normalize(self.text_features, dim=-1).t()

    # -- modes: the frozen backbone never leaves eval (BatchNorm statistics, dropout)
    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.clip.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        return self

    # -- learnable state
    def learnable_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (PEFT, h_t, h_m): what a run dir's checkpoint holds."""
        return {n: p.detach().clone() for n, p in self.learnable_named_parameters()}

    def load_learnable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        own = dict(self.learnable_named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if strict and (missing or unexpected) or bad:
            raise HgltrError(
                "checkpoint does not fit this model: "
                + "; ".join(f"{what} {keys[:3]}" for what, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad)) if keys),
                "Rebuild the model with the run's config (same --model, --peft and its options, classes).")
        with torch.no_grad():
            for k, p in own.items():
                if k in state:
                    p.copy_(state[k].to(p.device, p.dtype))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen open_clip weights under open_clip's own keys (PEFT modules left out)."""
        learnable = {n for n, _ in self.clip.named_parameters() if _.requires_grad}
        return {k: v for k, v in self.clip.state_dict().items() if k not in learnable}

    def parameter_counts(self) -> dict[str, int]:
        peft = sum(p.numel() for p in self.peft.learnable_parameters())
        aligner = sum(p.numel() for p in self.aligner.parameters())
        classifier = sum(p.numel() for p in self.classifier.parameters())
        learnable = sum(p.numel() for _, p in self.learnable_named_parameters())
        frozen = sum(p.numel() for p in self.clip.parameters() if not p.requires_grad)
        return {"peft": peft, "aligner": aligner, "classifier": classifier, "paper_params": peft + aligner,
                "learnable": learnable, "backbone_frozen": frozen}

    def merge_peft(self) -> None:
        self.peft.merge()

    def preprocess_info(self) -> dict:
        return self.backbone_info.preprocess_info()


def _text_dim(clip: nn.Module) -> int:
    tp = getattr(clip, "text_projection", None)
    if isinstance(tp, nn.Linear):
        return tp.out_features
    if isinstance(tp, torch.Tensor):
        return tp.shape[1]
    text = getattr(clip, "text", None)
    out = getattr(text, "output_dim", None)
    if out:
        return int(out)
    return int(clip.visual.output_dim)


# ----------------------------------------------------------------------------- builders

def resolve_device(device: Any) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_classes(cfg, classes: Any = None) -> Any:
    """`classes` if given, else the hierarchy file named by cfg.hierarchy.file."""
    if classes is not None:
        return classes
    path = getattr(getattr(cfg, "hierarchy", None), "file", None)
    if not path:
        raise HgltrError("No classes: the model needs a hierarchy file or a class list.",
                         "Pass --hierarchy FILE (from `hgltr build-hierarchy`).")
    if not Path(path).is_file():
        raise HgltrError(f"hierarchy file {path!r} does not exist.", "Check the path given to --hierarchy.")
    try:
        from hgltr_cli.hierarchy import load_hierarchy
    except ImportError:
        raise HgltrError("Reading hierarchy files is not available in this build of hgltr.") from None
    return load_hierarchy(path)


def _peft_method(cfg, plugins=None) -> tuple[PeftMethod, Any]:
    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    comp = plugins.get("peft", cfg.peft.name)
    options = cfg.options.get("peft") if hasattr(cfg, "options") else None
    if options is None:
        options = comp.default_config()
    method = comp.factory(options)
    if not isinstance(method, PeftMethod):
        missing = [a for a in ("apply", "learnable_parameters") if not hasattr(method, a)]
        if missing:
            raise HgltrError(f"PEFT plugin {comp.plugin!r}: {cfg.peft.name!r} does not implement {missing}.")
    return method, comp


def build_model(cfg, classes: Any = None, device: Any = "cpu", *, prompts: Optional[Sequence[str]] = None,
                cache_dir: Optional[str | Path] = None, encode_text: bool = True, plugins=None) -> HGLTRModel:
    """The model `hgltr train` trains, from a resolved TrainConfig.

    classes: a Hierarchy (prompts from `hierarchy.prompts(cfg.model.prompt_template)`), a list of
    class names, or None (read cfg.hierarchy.file). prompts: explicit prompts (override).
    cache_dir: where text features are cached (default $HGLTR_CACHE_DIR/text or ~/.cache/hgltr/text;
    the engine passes the run dir). encode_text=False skips the text encoder (classifier then
    random-init; for summaries and parameter counts).
    """
    m = cfg.model
    dev = resolve_device(device)
    if prompts is None:
        prompts = prompts_for(load_classes(cfg, classes), m.prompt_template)
    prompts = list(prompts)
    backbone = load_backbone(m.name, m.pretrained, allow_torchscript=m.allow_torchscript,
                             quick_gelu=getattr(m, "quick_gelu", None), device="cpu", plugins=plugins)
    method, _comp = _peft_method(cfg, plugins)
    trunk, mode = prepare_trunk(backbone, len(prompts))
    z_t = None
    if encode_text:
        z_t = encode_prompts(backbone, prompts, device="cpu",
                             cache_dir=cache_dir if cache_dir is not None else cache_root() / "text")
    method.apply(trunk)
    model = HGLTRModel(backbone, method, trunk, mode, z_t, len(prompts), classifier=m.classifier,
                       cosine_scale=m.cosine_scale, prompts=prompts)
    return model.to(dev)


def model_summary(cfg, classes: Any = None, *, plugins=None, prompts: Optional[Sequence[str]] = None) -> dict:
    """What `hgltr train --dry-run [--json]` prints: builds everything except the text features."""
    m = cfg.model
    if prompts is None:
        prompts = prompts_for(load_classes(cfg, classes), m.prompt_template)
    model = build_model(cfg, None, "cpu", prompts=prompts, encode_text=False, plugins=plugins)
    counts = model.parameter_counts()
    info = model.backbone_info
    method = model.peft
    desc = method.describe()
    try:
        if plugins is None:
            from hgltr_cli.plugins import get_plugins
            plugins = get_plugins()
        description = plugins.get("peft", cfg.peft.name).description
    except HgltrError:
        description = ""
    return {
        "backbone": {
            "model": info.name, "pretrained": info.pretrained, "weights": info.weights_id,
            "quick_gelu": info.quick_gelu, "quick_gelu_reason": info.quick_gelu_reason,
            "trunk": model.trunk_kind, "feature_dim": model.d_m, "text_dim": model.d_t,
            "frozen_params": counts["backbone_frozen"], **info.preprocess_info(),
        },
        "peft": {"name": cfg.peft.name, "description": description,
                 "options": desc.get("options", {}), **{k: v for k, v in desc.items() if k not in ("name", "options")}},
        "classes": model.num_classes,
        "classifier": {"kind": m.classifier, **({"scale": m.cosine_scale} if m.classifier == "cosine" else {})},
        "prompt_template": m.prompt_template,
        "example_prompts": list(prompts[:3]),
        "learnable_params": {"peft": counts["peft"], "h_t": counts["aligner"], "classifier": counts["classifier"],
                             "total": counts["learnable"]},
        "paper_params": counts["paper_params"],
    }

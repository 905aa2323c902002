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


def train_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, *,
                    scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                    interpolation: str = "bicubic"):
    """RandomResizedCrop(image_size, scale) + horizontal flip + ToTensor + Normalize(mean, std).

    scale (0.08, 1) is torchvision's and LIFT's default; randomness comes from torch's global RNG,
    which the hgltr loader seeds per sample so batches are the same for any worker count.
    """
    _check(image_size, mean, std)
    from torchvision import transforms as T
    ops = [T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=_interp(interpolation), antialias=True)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(ops)


def eval_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, *,
                   resize_size: int | None = None, interpolation: str = "bicubic"):
    """Resize the shorter side to resize_size (default image_size, as CLIP's preprocess) + center crop.

    LIFT's test transform resizes to image_size * 8 // 7 first: pass resize_size for that.
    """
    _check(image_size, mean, std)
    from torchvision import transforms as T
    resize = resize_size or image_size
    if resize < image_size:
        raise HgltrError(f"resize_size ({resize}) must be >= image_size ({image_size}).")
    return T.Compose([T.Resize(resize, interpolation=_interp(interpolation), antialias=True),
                      T.CenterCrop(image_size), T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


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

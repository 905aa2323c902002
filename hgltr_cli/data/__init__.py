"""Datasets: the DatasetSource contract, class groups, safe image decoding, transforms, loaders.

`source` and `images` import no torch; `transforms` and `loader` (torch) load on first use.
"""
from __future__ import annotations

from hgltr_cli.data.images import BadImageError, BadImageReport, load_image_rgb, to_rgb
from hgltr_cli.data.source import (ArraySplit, DatasetSource, FileSplit, Split, class_groups, long_tail_counts,
                                   long_tail_indices, stratified_holdout)

_LAZY = {
    "train_transform": "hgltr_cli.data.transforms", "eval_transform": "hgltr_cli.data.transforms",
    "model_norm": "hgltr_cli.data.transforms", "CLIP_MEAN": "hgltr_cli.data.transforms",
    "CLIP_STD": "hgltr_cli.data.transforms",
    "build_loader": "hgltr_cli.data.loader", "HgltrLoader": "hgltr_cli.data.loader",
    "ImageDataset": "hgltr_cli.data.loader", "EpochSampler": "hgltr_cli.data.loader",
    "distributed_sampler": "hgltr_cli.data.loader", "Collate": "hgltr_cli.data.loader",
    "ImageTransform": "hgltr_cli.data.transforms",
}

__all__ = ["ArraySplit", "BadImageError", "BadImageReport", "DatasetSource", "FileSplit", "Split",
           "class_groups", "load_image_rgb", "long_tail_counts", "long_tail_indices", "stratified_holdout",
           "to_rgb", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hgltr_cli.data' has no attribute {name!r}")

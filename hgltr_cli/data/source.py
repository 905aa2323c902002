"""The DatasetSource contract every dataset plugin returns, plus the long-tail helpers they share.

A dataset plugin's factory is called as ``factory(section, options)`` where `section` is the
config's DatasetSection (root, thresholds, image_size, workers, skip_bad_images) and `options`
the plugin's own config dataclass; it returns a `DatasetSource`:

- ``class_names``: list of K names in label order;
- ``train_counts``: per-class number of training images (computed from the train labels);
- ``split("train" | "val" | "test")``: a `Split` — a sequence of ``(item, label)`` that can
  ``load(i)`` an RGB PIL image and name its ``source(i)`` for error messages.

Importing this module does not import torch.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

from hgltr_cli.errors import HgltrError
from hgltr_cli.data.images import load_image_rgb

SPLITS = ("train", "val", "test")
Group = Literal["many", "medium", "few"]


# ---------------------------------------------------------------- groups

def class_groups(counts: Sequence[int], many_above: int = 100, few_below: int = 20,
                 few_inclusive: bool = False) -> list[str]:
    """Per-class 'many' (N_k > many_above), 'few' (N_k < few_below, or <= with few_inclusive), else 'medium'.

    The standard OLTR/LIFT split; the authors' code counts N_k <= 20 as few (few_inclusive=True).
    """
    if few_below > many_above:
        raise HgltrError(f"few_below ({few_below}) must not exceed many_above ({many_above}).",
                         "Set dataset.few_below <= dataset.many_above.")
    out = []
    for n in counts:
        n = int(n)
        if n > many_above:
            out.append("many")
        elif n < few_below or (few_inclusive and n == few_below):
            out.append("few")
        else:
            out.append("medium")
    return out


# ---------------------------------------------------------------- splits

class Split:
    """One split: labels plus a way to decode item i. Subclasses implement `load` and `source`."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.item(i), int(self.labels[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def item(self, i: int) -> Any:
        raise NotImplementedError

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        """RGB PIL image of sample i (raises BadImageError for undecodable files)."""
        raise NotImplementedError

    def source(self, i: int) -> str:
        """Where sample i comes from, for messages (a path, or 'file#index')."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Split":
        raise NotImplementedError


class FileSplit(Split):
    """Samples stored as image files; `origins[i]` optionally names the list file and line."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], origins: Sequence[str] | None = None):
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        self.origins = list(origins) if origins is not None else None

    def item(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        return load_image_rgb(self.paths[i], draft_size=draft_size, name=self.source(i))

    def source(self, i: int) -> str:
        if self.origins is not None:
            return f"{self.paths[i]} ({self.origins[i]})"
        return self.paths[i]

    def subset(self, indices: Sequence[int]) -> "FileSplit":
        idx = [int(i) for i in indices]
        return FileSplit([self.paths[i] for i in idx], self.labels[idx],
                         [self.origins[i] for i in idx] if self.origins is not None else None)


class ArraySplit(Split):
    """Samples held in memory as uint8 arrays (N, H, W) or (N, H, W, C), e.g. CIFAR or idx files."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], origin: str, indices: Sequence[int] | None = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError("images must be uint8 (N, H, W) or (N, H, W, C)")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.origin = origin
        # position in the original file, so messages and reproducibility checks name the real record
        self.indices = np.asarray(indices if indices is not None else np.arange(len(self.labels)), dtype=np.int64)

    def item(self, i: int) -> np.ndarray:
        return self.images[i]

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        arr = self.images[i]
        if arr.ndim == 2 or arr.shape[-1] == 1:
            return Image.fromarray(arr.reshape(arr.shape[0], arr.shape[1]), mode="L").convert("RGB")
        return Image.fromarray(arr, mode="RGB")

    def source(self, i: int) -> str:
        return f"{self.origin}#{int(self.indices[i])}"

    def subset(self, indices: Sequence[int]) -> "ArraySplit":
        idx = np.asarray(indices, dtype=np.int64)
        return ArraySplit(self.images[idx], self.labels[idx], self.origin, self.indices[idx])


class EmptySplit(Split):
    def __init__(self):
        self.labels = np.zeros(0, dtype=np.int64)

    def subset(self, indices):
        return self


# ---------------------------------------------------------------- the source

@dataclass
class DatasetSource:
    """What a dataset plugin gives the engine: class names, splits and where they came from."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    root: str | None = None
    notes: list[str] = field(default_factory=list)  # facts worth printing (held-out val, skipped files)
    info: dict = field(default_factory=dict)  # plugin-specific facts for env.json / `hgltr inspect`

    def __post_init__(self):
        self.class_names = [str(c) for c in self.class_names]
        k = len(self.class_names)
        if k == 0:
            raise HgltrError(f"dataset {self.name!r} has no classes.", "Check --data-root and the dataset layout.")
        dup = sorted(c for c, n in Counter(self.class_names).items() if n > 1)  # linear, not O(K^2)
        if dup:
            raise HgltrError(f"dataset {self.name!r} has duplicate class names: {', '.join(dup)}.",
                             "Class names must be unique; fix the class-name file.")
        for split_name, split in self.splits.items():
            if split_name not in SPLITS:
                raise ValueError(f"unknown split {split_name!r}")
            check_labels(split, k, f"{self.name} {split_name} split")
        train = self.splits.get("train")
        if train is None or len(train) == 0:
            raise HgltrError(f"dataset {self.name!r} has no training images.", "Check --data-root and the layout.")
        empty = [self.class_names[i] for i, n in enumerate(self.train_counts) if n == 0]
        if empty:
            raise HgltrError(f"dataset {self.name!r}: {len(empty)} class(es) have no training images: "
                             f"{', '.join(empty[:20])}{' ...' if len(empty) > 20 else ''}.",
                             "Every class needs at least one training image (long-tail priors log(N_k) "
                             "are undefined at 0); add images or remove the class.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> list[int]:
        return counts_of(self.splits["train"].labels, self.num_classes)

    def has_split(self, name: str) -> bool:
        return name in self.splits and len(self.splits[name]) > 0

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise HgltrError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}.")
        s = self.splits.get(name)
        if s is None or len(s) == 0:
            raise HgltrError(f"dataset {self.name!r} has no {name} split"
                             + (f" under {self.root}" if self.root else "") + ".",
                             _MISSING_SPLIT_HINT.get(name, ""))
        return s

    def groups(self, many_above: int = 100, few_below: int = 20, few_inclusive: bool = False) -> list[str]:
        return class_groups(self.train_counts, many_above, few_below, few_inclusive)

    def groups_for(self, section: Any) -> list[str]:
        """Groups with the thresholds of a DatasetSection."""
        return self.groups(section.many_above, section.few_below, section.few_inclusive)

    def summary(self, section: Any | None = None) -> dict:
        counts = self.train_counts
        groups = self.groups_for(section) if section is not None else self.groups()
        return {
            "name": self.name, "root": self.root, "num_classes": self.num_classes,
            "splits": {k: len(v) for k, v in self.splits.items()},
            "train_counts": {"max": max(counts), "min": min(counts), "imbalance": max(counts) / max(1, min(counts))},
            "groups": {g: groups.count(g) for g in ("many", "medium", "few")},
            "notes": list(self.notes), **({"info": self.info} if self.info else {}),
        }


_MISSING_SPLIT_HINT = {
    "test": "Give the dataset a test split (e.g. a test/ folder or test list file); see docs/datasets.md.",
    "val": "Give the dataset a validation split or let the plugin hold one out of train (val_fraction > 0).",
}


def counts_of(labels: np.ndarray, k: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)[:k].astype(int).tolist()


def check_labels(split: Split, k: int, what: str) -> None:
    """Every label in [0, K): the error names the offending sample (file and line where known)."""
    labels = np.asarray(split.labels)
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        raise HgltrError(f"{what}: label {int(labels[i])} of {split.source(i)} is out of range "
                         f"(the dataset has {k} classes, labels 0..{k - 1}); {bad.size} sample(s) affected.",
                         "Check the label column and the class-name file.")


# ---------------------------------------------------------------- long-tail helpers

def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float,
                     kind: Literal["exp", "step"] = "exp") -> list[int]:
    """Per-class counts exactly as LDAM-DRW/LIFT's IMBALANCECIFAR: int(n_max * (1/imb)^(k/(K-1))).

    `step`: the first K//2 classes keep n_max, the rest int(n_max / imb).
    """
    if imbalance_factor < 1:
        raise HgltrError(f"imbalance_factor must be >= 1 (n_max / n_min), got {imbalance_factor}.")
    f = 1.0 / float(imbalance_factor)  # LDAM's imb_factor argument (0.01 for 100)
    img_max = float(n_max)
    if kind == "exp":
        if num_classes == 1:
            return [int(img_max)]
        return [int(img_max * (f ** (k / (num_classes - 1.0)))) for k in range(num_classes)]
    if kind == "step":
        half = num_classes // 2
        return [int(img_max)] * half + [int(img_max * f)] * (num_classes - half)
    raise HgltrError(f"unknown imbalance type {kind!r}; use exp or step.")


def long_tail_indices(labels: np.ndarray, counts: Sequence[int], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """LDAM's subset: np.random.seed(seed); per class in label order, shuffle its indices, keep the first n_k.

    Returns per class (kept, unused) index arrays; `unused` keeps the shuffled order, so a
    validation split drawn from it is seeded too.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)  # same stream as the legacy global np.random.seed/shuffle
    kept, unused = [], []
    for c, n in zip(np.unique(labels), counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:n])
        unused.append(idx[n:])
    return kept, unused


def long_tail_with_val(labels: np.ndarray, num_classes: int, imbalance_factor: float, seed: int,
                       val_per_class: int, exact_counts: bool = True,
                       kind: Literal["exp", "step"] = "exp") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Long-tailed train indices (LDAM's exactly) and a validation set held out of the original train set.

    Validation images come from the images the long-tailed subset did not use, so the train
    counts stay exactly LDAM's. A class with fewer unused images than val_per_class (the head
    class uses all of its images) gets fewer in val — or, with exact_counts=False, the shortfall
    is taken from the end of its long-tailed subset.
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    if len(present) != num_classes:
        raise HgltrError(f"the training file holds {len(present)} classes, expected {num_classes}.")
    n_max = len(labels) / num_classes  # LDAM: img_max = len(data) / cls_num
    counts = long_tail_counts(n_max, num_classes, imbalance_factor, kind)
    kept, unused = long_tail_indices(labels, counts, seed)
    train, val, notes = [], [], []
    short = []
    for c in range(num_classes):
        k, u = kept[c], unused[c]
        v = u[:val_per_class]
        if len(v) < val_per_class:
            if not exact_counts:
                need = min(val_per_class - len(v), max(0, len(k) - 1))
                if need:
                    v = np.concatenate([v, k[len(k) - need:]])
                    k = k[:len(k) - need]
            short.append(c)
        train.append(k)
        val.append(v)
    if short:
        how = ("train counts kept exactly as LDAM/LIFT" if exact_counts
               else "shortfall taken from their long-tailed training images")
        notes.append(f"{len(short)} class(es) have fewer than {val_per_class} unused images for validation "
                     f"(classes {', '.join(map(str, short[:10]))}{' ...' if len(short) > 10 else ''}; {how}).")
    return np.concatenate(train), np.concatenate(val) if val else np.zeros(0, np.int64), notes


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int, keep_min: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: floor(fraction * n_k) of each class held out, at least keep_min kept.

    Returns (kept, held) index arrays, each sorted. Deterministic given (labels, fraction, seed).
    """
    if not 0.0 <= fraction < 1.0:
        raise HgltrError(f"a held-out fraction must be in [0, 1), got {fraction}.")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        n_held = min(int(np.floor(fraction * len(idx))), max(0, len(idx) - keep_min))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    cat = lambda xs: np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(kept), cat(held)


def require_root(section: Any, dataset: str, example: str) -> Path:
    """The dataset root from the DatasetSection, as an existing directory, or a clear error."""
    root = getattr(section, "root", None)
    if not root:
        raise HgltrError(f"dataset {dataset!r} needs a data root.", f"Pass --data-root DIR ({example}).")
    p = Path(root).expanduser()
    if not p.exists():
        raise HgltrError(f"data root {str(p)!r} does not exist.", "Check --data-root.")
    if not p.is_dir():
        raise HgltrError(f"data root {str(p)!r} is not a directory.", "Check --data-root.")
    return p

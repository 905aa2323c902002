"""`imagefolder`: root/<class>/<image> trees, torchvision-ImageFolder style.

Two layouts:
- split folders: root/train/<class>/..., root/val/<class>/..., root/test/<class>/... (names
  settable); a missing val/ is held out of train (seeded, per class, val_fraction);
- flat: root/<class>/...: val (and, with test_fraction, test) are held out of it unless
  root/val/ (root/test/) exist beside the class folders.
Classes are the sorted sub-folder names of the training folder; val/test may not name
classes that training lacks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hgltr_cli import hookimpl
from hgltr_cli.data.source import DatasetSource, FileSplit, require_root, stratified_holdout
from hgltr_cli.errors import HgltrError, close_matches

IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"]


@dataclass
class ImageFolderConfig:
    train_dir: str = "train"  # used when root/<train_dir> exists; otherwise root itself is the training tree
    val_dir: str = "val"
    test_dir: str = "test"
    val_fraction: float = 0.1  # held out of train per class when there is no val folder (0 = no val)
    test_fraction: float = 0.0  # flat layout only: also hold a test split out of the tree
    seed: int = 0  # seed of the held-out splits
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def scan_tree(folder: Path, extensions: list[str]) -> dict[str, list[str]]:
    """class folder name -> sorted image paths (recursively, hidden files and other extensions ignored)."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    out: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if _is_hidden(entry.name) or not entry.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            files += [os.path.join(dirpath, f) for f in filenames
                      if not _is_hidden(f) and os.path.splitext(f)[1].lower() in exts]
        out[entry.name] = sorted(files)
    return out


def _split_from_tree(tree: dict[str, list[str]], class_index: dict[str, int], folder: Path) -> FileSplit:
    unknown = [c for c in tree if c not in class_index]
    if unknown:
        hints = "; ".join(f"{u!r}" + (f" (did you mean {close_matches(u, class_index)[0]!r}?)"
                                       if close_matches(u, class_index) else "") for u in unknown[:10])
        raise HgltrError(f"{folder} has class folder(s) the training folder lacks: {hints}.",
                         "Every class in val/test must also exist in train; rename or remove those folders.")
    paths, labels = [], []
    for c, files in tree.items():
        paths += files
        labels += [class_index[c]] * len(files)
    return FileSplit(paths, labels)


def load_imagefolder(section, options: ImageFolderConfig) -> DatasetSource:
    root = require_root(section, "imagefolder", "a folder of class sub-folders, or with train/ val/ test/")
    split_layout = (root / options.train_dir).is_dir()
    train_root = root / options.train_dir if split_layout else root
    tree = scan_tree(train_root, options.extensions)
    if not split_layout:  # in a flat tree, val/ and test/ folders are not classes
        for name in (options.val_dir, options.test_dir):
            tree.pop(name, None)
    if not tree:
        raise HgltrError(f"no class folders under {train_root}.",
                         "Expected root/<class>/<image> or root/train/<class>/<image>; see docs/datasets.md.")
    class_names = sorted(tree)
    class_index = {c: i for i, c in enumerate(class_names)}
    empty = [c for c in class_names if not tree[c]]
    if empty:
        raise HgltrError(f"{len(empty)} class folder(s) under {train_root} hold no images "
                         f"({', '.join(empty[:20])}).",
                         f"Add images (extensions: {', '.join(options.extensions)}) or remove the folders.")
    train = _split_from_tree(tree, class_index, train_root)
    splits: dict[str, FileSplit] = {}
    notes: list[str] = []
    val_root = root / options.val_dir
    test_root = root / options.test_dir
    if test_root.is_dir():
        splits["test"] = _split_from_tree(scan_tree(test_root, options.extensions), class_index, test_root)
    elif not split_layout and options.test_fraction > 0:
        kept, held = stratified_holdout(train.labels, options.test_fraction, options.seed + 1)
        splits["test"] = train.subset(held)
        train = train.subset(kept)
        notes.append(f"test split: {len(held)} images held out of the tree (test_fraction "
                     f"{options.test_fraction}, seed {options.seed})")
    if val_root.is_dir():
        splits["val"] = _split_from_tree(scan_tree(val_root, options.extensions), class_index, val_root)
    elif options.val_fraction > 0:
        kept, held = stratified_holdout(train.labels, options.val_fraction, options.seed)
        splits["val"] = train.subset(held)
        train = train.subset(kept)
        notes.append(f"val split: {len(held)} images held out of train (val_fraction {options.val_fraction}, "
                     f"seed {options.seed})")
    splits["train"] = train
    return DatasetSource("imagefolder", class_names, splits, root=str(root), notes=notes,
                         info={"layout": "split folders" if split_layout else "flat"})


@hookimpl
def register_datasets(register):
    register("imagefolder", load_imagefolder, config=ImageFolderConfig,
             description="Folders of images per class (root/<class>/*, or with train/ val/ test/ sub-folders)")


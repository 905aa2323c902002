"""`split-file`: the long-tail benchmarks' list files ("relative/path label" per line).

ImageNet-LT, Places-LT and iNaturalist-2018 (as OLTR/LIFT distribute them) give one text file
per split, each line an image path relative to the dataset root and an integer label.
`benchmark` fills in the official file names; class names come from a class-name file (one
name per line in label order, or "label name" lines), else from the images' parent folders.
iNaturalist-2018 has no separate test set: its official val list is the test split and the
validation split is held out of train.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from hgltr_cli import hookimpl
from hgltr_cli.data.source import DatasetSource, FileSplit, require_root, stratified_holdout
from hgltr_cli.errors import HgltrError

BENCHMARKS = {
    # benchmark -> (train list, val list or None = hold out of train, test list)
    "imagenet-lt": ("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"),
    "places-lt": ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"),
    "inat2018": ("iNaturalist18_train.txt", None, "iNaturalist18_val.txt"),
}


@dataclass
class SplitFileConfig:
    benchmark: Literal["custom", "imagenet-lt", "places-lt", "inat2018"] = "custom"
    train_list: str = "train.txt"  # relative to list_root (default: the data root) or absolute
    val_list: Optional[str] = "val.txt"  # missing file or null: hold val_fraction out of train
    test_list: Optional[str] = "test.txt"
    class_names: Optional[str] = None  # file: one name per line in label order, or "label name" lines
    list_root: Optional[str] = None  # where the list files are (default: the data root)
    image_root: Optional[str] = None  # what image paths are relative to (default: the data root)
    val_fraction: float = 0.05
    seed: int = 0
    check_files: int = 3  # check that the first N images of each split exist (catches a wrong root early)

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")


def _resolve(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def read_list(path: Path, image_root: Path, num_classes: Optional[int]) -> FileSplit:
    """Parse "path label" lines (path may contain spaces: the label is the last field)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HgltrError(f"list file {path} is not UTF-8 text.", "Save it as UTF-8 (e.g. with iconv).") from None
    paths, labels, origins = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
            raise HgltrError(f"{path}, line {lineno}: expected 'relative/path label', got {s[:120]!r}.",
                             "Each line holds an image path and an integer class label separated by a space.")
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise HgltrError(f"{path}, line {lineno}: label {label} is out of range (labels must be {bound}).",
                             "Check the label column and the class-name file.")
        raw = parts[0]
        # absolute paths that exist are kept; others (Places-LT's "/a/airfield/...") are root-relative
        paths.append(raw if Path(raw).is_absolute() and Path(raw).exists() else str(image_root / raw.lstrip("/")))
        labels.append(label)
        origins.append(f"{path.name}:{lineno}")
    return FileSplit(paths, labels, origins)


def read_class_names(path: Path) -> list[str]:
    """One name per line in label order, or 'label name' lines (any order, every label once)."""
    if not path.is_file():
        raise HgltrError(f"class-name file {path} does not exist.", "Check dataset.class_names.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HgltrError(f"class-name file {path} is not UTF-8 text.", "Save it as UTF-8 (e.g. with iconv).") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    numbered = [re.fullmatch(r"(\d+)[\s,:]+(.+)", ln) for ln in lines]
    if lines and all(numbered):
        by_label: dict[int, str] = {}
        for ln, m in zip(lines, numbered):
            k = int(m.group(1))
            if k in by_label:
                raise HgltrError(f"{path}: label {k} is named twice.")
            by_label[k] = m.group(2).strip()
        missing = sorted(set(range(len(by_label))) - set(by_label))
        if missing:
            raise HgltrError(f"{path}: labels must be 0..{len(by_label) - 1}; missing {missing[:10]}.")
        return [by_label[k] for k in range(len(by_label))]
    return lines


def names_from_folders(train: FileSplit, k: int) -> list[str]:
    """Class k's name = the parent folder of its images when all of them agree, else 'class_k'."""
    parents: dict[int, set[str]] = {}
    for p, y in zip(train.paths, train.labels.tolist()):
        parents.setdefault(y, set()).add(Path(p).parent.name)
    names = []
    for c in range(k):
        ps = parents.get(c, set())
        names.append(next(iter(ps)) if len(ps) == 1 else f"class_{c}")
    if len(set(names)) != len(names):  # folders shared between classes: fall back to numbers
        names = [f"class_{c}" for c in range(k)]
    return names


def load_split_file(section, options: SplitFileConfig) -> DatasetSource:
    root = require_root(section, "split-file", "the folder the list files' image paths are relative to")
    train_name, val_name, test_name = options.train_list, options.val_list, options.test_list
    if options.benchmark != "custom":
        train_name, val_name, test_name = BENCHMARKS[options.benchmark]
    list_root = Path(options.list_root).expanduser() if options.list_root else root
    image_root = Path(options.image_root).expanduser() if options.image_root else root
    names = read_class_names(_resolve(list_root, options.class_names)) if options.class_names else None
    k = len(names) if names is not None else None
    train_path = _resolve(list_root, train_name)
    if not train_path.is_file():
        raise HgltrError(f"training list {train_path} does not exist.",
                         "Set dataset.train_list (or dataset.benchmark) and dataset.list_root; see docs/datasets.md.")
    splits: dict[str, FileSplit] = {"train": read_list(train_path, image_root, k)}
    notes: list[str] = []
    for split, name in (("val", val_name), ("test", test_name)):
        if not name:
            continue
        p = _resolve(list_root, name)
        if p.is_file():
            splits[split] = read_list(p, image_root, k)
        elif name not in ("val.txt", "test.txt"):  # an explicitly named file must exist
            raise HgltrError(f"{split} list {p} does not exist.", f"Check dataset.{split}_list.")
    if k is None:
        k = 1 + max(int(s.labels.max()) for s in splits.values() if len(s))
        names = names_from_folders(splits["train"], k)
        notes.append("class names taken from the images' parent folders (set dataset.class_names for real names)")
    if "val" not in splits and options.val_fraction > 0:
        train = splits["train"]
        kept, held = stratified_holdout(train.labels, options.val_fraction, options.seed)
        splits["val"], splits["train"] = train.subset(held), train.subset(kept)
        notes.append(f"val split: {len(held)} images held out of train (val_fraction {options.val_fraction}, "
                     f"seed {options.seed})")
    for split, s in splits.items():
        for i in range(min(options.check_files, len(s))):
            if not Path(s.paths[i]).exists():
                raise HgltrError(f"{split} image {s.paths[i]} ({s.origins[i]}) does not exist.",
                                 "Image paths are relative to the data root (or dataset.image_root); check them.")
    return DatasetSource(f"split-file:{options.benchmark}" if options.benchmark != "custom" else "split-file",
                         names, splits, root=str(root), notes=notes,
                         info={"benchmark": options.benchmark, "lists": {"train": str(train_path)}})


@hookimpl
def register_datasets(register):
    register("split-file", load_split_file, config=SplitFileConfig,
             description="List files of 'path label' lines (ImageNet-LT, Places-LT, iNaturalist-2018 layout)")


"""`fashion-mnist-lt`: a long-tailed Fashion-MNIST from the official idx files (gzipped or not).

Real photos are not available offline; Fashion-MNIST is (Debian's `dataset-fashion-mnist`
installs it under /usr/share/datasets/fashion-mnist, found automatically). The long tail is
built as CIFAR-LT (LDAM): n_k = int(6000 * (1/imb)^(k/9)), np.random.seed(seed), per class the
first n_k of its shuffled indices. Validation comes from the unused training images; test is
the official 10,000-image test set.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hgltr_cli import hookimpl
from hgltr_cli.data.source import ArraySplit, DatasetSource, long_tail_with_val
from hgltr_cli.errors import HgltrError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
INSTALL_HINT = ("Install it with `apt-get install -y dataset-fashion-mnist` (found automatically under "
                f"{DEBIAN_DIR}) or pass --data-root DIR holding the four idx files (.gz or not).")


@dataclass
class FashionMNISTLTConfig:
    imbalance_factor: float = 100.0
    imbalance_type: Literal["exp", "step"] = "exp"
    seed: int = 0
    val_per_class: int = 100  # validation images per class, from training images the subset did not use
    exact_counts: bool = True

    def validate(self) -> None:
        if self.imbalance_factor < 1:
            raise ValueError("imbalance_factor must be >= 1")
        if self.val_per_class < 0:
            raise ValueError("val_per_class must be >= 0")


_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format): magic 0 0 dtype ndim, big-endian dims, then the data."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise HgltrError(f"{path} is not a valid gzip file ({exc}).", "Re-download or reinstall it.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise HgltrError(f"{path} is not an idx file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise HgltrError(f"{path} is truncated (header).")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != need:
        raise HgltrError(f"{path}: expected {need} data bytes for shape {dims}, found {len(raw) - header} "
                         "(truncated or corrupt).", "Re-download or reinstall the file.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_dir(root: str | None) -> Path:
    candidates = [Path(root).expanduser()] if root else [Path(DEBIAN_DIR)]
    for d in candidates:
        if d.is_dir() and all(_file(d, f) for f in FILES.values()):
            return d
        if root and d.is_dir() and (d / "fashion-mnist").is_dir():
            return find_dir(str(d / "fashion-mnist"))
    where = root or DEBIAN_DIR
    raise HgltrError(f"Fashion-MNIST idx files not found in {where}.", INSTALL_HINT)


def _file(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _pair(d: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(_file(d, FILES[images]))
    y = read_idx(_file(d, FILES[labels]))
    if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise HgltrError(f"{d}: {images} must be uint8 (N, H, W) and {labels} N labels; got "
                         f"{x.dtype} {x.shape} and {y.shape}.")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= len(CLASS_NAMES)))
    if bad.size:
        raise HgltrError(f"{_file(d, FILES[labels])}: record {int(bad[0])} has label {int(y[bad[0]])}, "
                         f"outside 0..{len(CLASS_NAMES) - 1}.")
    return x, y


def load_fashion_mnist_lt(section, options: FashionMNISTLTConfig) -> DatasetSource:
    d = find_dir(getattr(section, "root", None))
    train_x, train_y = _pair(d, "train_images", "train_labels")
    test_x, test_y = _pair(d, "test_images", "test_labels")
    k = len(CLASS_NAMES)
    keep, val, notes = long_tail_with_val(train_y, k, options.imbalance_factor, options.seed,
                                          options.val_per_class, options.exact_counts, options.imbalance_type)
    full = ArraySplit(train_x, train_y, str(_file(d, FILES["train_images"])))
    splits = {"train": full.subset(keep), "test": ArraySplit(test_x, test_y, str(_file(d, FILES["test_images"])))}
    if len(val):
        splits["val"] = full.subset(val)
    return DatasetSource("fashion-mnist-lt", CLASS_NAMES, splits, root=str(d), notes=notes,
                         info={"imbalance_factor": options.imbalance_factor, "seed": options.seed,
                               "imbalance_type": options.imbalance_type})


@hookimpl
def register_datasets(register):
    register("fashion-mnist-lt", load_fashion_mnist_lt, config=FashionMNISTLTConfig,
             description="Long-tailed Fashion-MNIST from idx files (Debian's dataset-fashion-mnist found automatically)")

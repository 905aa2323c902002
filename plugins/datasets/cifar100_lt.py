"""`cifar100-lt`: CIFAR-100-LT from the official `cifar-100-python` files, as LDAM-DRW and LIFT build it.

The official files ARE Python pickles (Python 2, numpy arrays inside). Pickle can run any
code, so they are read with a restricted unpickler that resolves only numpy's array
reconstruction (`_reconstruct`, `ndarray`, `dtype`) and `_codecs.encode` (bytes written by
Python 3); anything else — os.system, builtins.eval, ... — is refused with an error. The
result must then have the expected shape (dict of uint8 data (N, 3072) and int labels).

Long tail (LDAM's IMBALANCECIFAR100): n_k = int(500 * (1/imb)^(k/99)); np.random.seed(seed);
per class in label order, its indices are shuffled and the first n_k kept. Validation is held
out of the 50,000 official training images the subset did not use (val_per_class per class),
so train counts stay exactly LDAM's; test = the official 10,000-image test set.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hgltr_cli import hookimpl
from hgltr_cli.data.source import ArraySplit, DatasetSource, long_tail_with_val, require_root
from hgltr_cli.errors import HgltrError

NUM_CLASSES = 100
FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"


@dataclass
class Cifar100LTConfig:
    imbalance_factor: float = 100.0  # n_max / n_min (LDAM's imb_factor = 1 / this)
    imbalance_type: Literal["exp", "step"] = "exp"
    seed: int = 0  # LDAM's rand_number
    val_per_class: int = 20  # validation images per class, from training images the subset did not use
    exact_counts: bool = True  # False: classes short of unused images give val from their subset

    def validate(self) -> None:
        if self.imbalance_factor < 1:
            raise ValueError("imbalance_factor must be >= 1")
        if self.val_per_class < 0:
            raise ValueError("val_per_class must be >= 0")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode called with a non-string")
    return obj.encode(encoding, errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds dicts, lists, strings, bytes, numbers and plain numpy arrays."""

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain array or container")
        return make()


def restricted_load(data: bytes, origin: str) -> object:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise HgltrError(f"{origin} is not a safe CIFAR-100 file: {exc}.",
                         "hgltr reads only the official cifar-100-python format; re-download it.") from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbage files
        raise HgltrError(f"{origin} is not a readable CIFAR-100 file ({type(exc).__name__}: {exc}).",
                         "The file may be truncated or corrupt; re-download cifar-100-python.tar.gz.") from None
    return _ascii_keys(obj)


def _ascii_keys(obj):
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def _read_files(root: Path) -> tuple[dict[str, bytes], str]:
    """train/test/meta bytes from root/cifar-100-python/, root itself, or the .tar.gz (read, not extracted)."""
    for folder in (root / FOLDER, root):
        if (folder / "train").is_file() and (folder / "test").is_file():
            out = {n: (folder / n).read_bytes() for n in ("train", "test") }
            if (folder / "meta").is_file():
                out["meta"] = (folder / "meta").read_bytes()
            return out, str(folder)
    archive = root / ARCHIVE if (root / ARCHIVE).is_file() else (root if root.is_file() else None)
    if archive is not None:
        out = {}
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name in (f"{FOLDER}/train", f"{FOLDER}/test", f"{FOLDER}/meta"):
                    out[member.name.rsplit("/", 1)[1]] = tar.extractfile(member).read()
        if "train" in out and "test" in out:
            return out, str(archive)
    raise HgltrError(f"no CIFAR-100 files under {root}.",
                     f"Point --data-root at the folder holding {FOLDER}/ (train, test, meta) or {ARCHIVE}.")


def _as_batch(obj, origin: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict) or "data" not in obj or "fine_labels" not in obj:
        raise HgltrError(f"{origin} lacks the 'data' and 'fine_labels' entries of a cifar-100-python batch.")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise HgltrError(f"{origin}: 'data' must be a uint8 array (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}.")
    labels = np.asarray(obj["fine_labels"])
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise HgltrError(f"{origin}: 'fine_labels' must be {len(data)} integers.")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise HgltrError(f"{origin}: record {int(bad[0])} has label {int(labels[bad[0]])}, outside 0..99.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_cifar100_lt(section, options: Cifar100LTConfig) -> DatasetSource:
    root = require_root(section, "cifar100-lt", f"the folder holding {FOLDER}/ or {ARCHIVE}")
    files, where = _read_files(root)
    train_x, train_y = _as_batch(restricted_load(files["train"], f"{where}/train"), f"{where}/train")
    test_x, test_y = _as_batch(restricted_load(files["test"], f"{where}/test"), f"{where}/test")
    names = [f"class_{k}" for k in range(NUM_CLASSES)]
    if "meta" in files:
        meta = restricted_load(files["meta"], f"{where}/meta")
        raw = meta.get("fine_label_names") if isinstance(meta, dict) else None
        if isinstance(raw, list) and len(raw) == NUM_CLASSES:
            names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
    keep, val, notes = long_tail_with_val(train_y, NUM_CLASSES, options.imbalance_factor, options.seed,
                                          options.val_per_class, options.exact_counts, options.imbalance_type)
    train_full = ArraySplit(train_x, train_y, f"{where}/train")
    splits = {"train": train_full.subset(keep), "test": ArraySplit(test_x, test_y, f"{where}/test")}
    if len(val):
        splits["val"] = train_full.subset(val)
    return DatasetSource("cifar100-lt", names, splits, root=str(root), notes=notes,
                         info={"imbalance_factor": options.imbalance_factor, "seed": options.seed,
                               "imbalance_type": options.imbalance_type, "source": where})


@hookimpl
def register_datasets(register):
    register("cifar100-lt", load_cifar100_lt, config=Cifar100LTConfig,
             description="CIFAR-100-LT from the official cifar-100-python files (LDAM/LIFT subset, safe unpickling)")

"""Generators for tiny, real-format test data (imported by the tests in this folder).

Everything is written to pytest tmp dirs: image trees, list files, a cifar-100-python file
in the real Python-2 pickle layout, idx files, and a zoo of awkward or broken images.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, size=(16, 12), color=(200, 30, 60), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def noise_image(path: Path, size=(64, 48), seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def image_tree(root: Path, counts: dict[str, int], seed: int = 0, ext=".png") -> dict[str, list[Path]]:
    """root/<class>/<i>.png with a distinct colour per class and image."""
    out = {}
    rng = np.random.default_rng(seed)
    for c, n in counts.items():
        out[c] = []
        for i in range(n):
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            out[c].append(save_image(root / c / f"{i:03d}{ext}", color=color))
    return out


# ---------------------------------------------------------------- broken and awkward images

def zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    arr = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(path: Path, width=20000, height=20000) -> Path:
    """A tiny file whose header claims width x height pixels (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def sixteen_bit_png(path: Path, value=65535, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16)).save(path)
    return path


def palette_png_transparent(path: Path) -> Path:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    im.putpixel((0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, transparency=0)  # index 0 (blue) fully transparent
    return path


def rgba_png(path: Path) -> Path:
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red
    arr[:4, :, 3] = 255  # top half opaque, bottom half transparent
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGBA").save(path)
    return path


# ---------------------------------------------------------------- cifar-100-python (Python 2 pickles)

class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote: str/bytes as BINSTRING, numpy.core.multiarray globals."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar100(root: Path, per_class_train: int, per_class_test: int, seed: int = 0, archive: bool = False):
    """root/cifar-100-python/{train,test,meta} in the official layout; labels in shuffled order."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(100), per)
        rng.shuffle(labels)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels  # first red pixel = label: lets tests check which record landed where
        out[split] = (data, labels)
        obj = {"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
               "batch_label": f"{split}ing batch 1 of 1", "fine_labels": labels.tolist(),
               "coarse_labels": (labels // 5).tolist(), "data": data}
        out[split + "_bytes"] = py2_pickle(obj)
    names = [f"fine_{k:02d}" for k in range(100)]
    out["names"] = names
    meta = py2_pickle({"fine_label_names": names, "coarse_label_names": [f"coarse_{k}" for k in range(20)]})
    folder = root / "cifar-100-python"
    if archive:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
            for name, blob in (("train", out["train_bytes"]), ("test", out["test_bytes"]), ("meta", meta)):
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(out["train_bytes"])
        (folder / "test").write_bytes(out["test_bytes"])
        (folder / "meta").write_bytes(meta)
    return out


# ---------------------------------------------------------------- idx (MNIST / Fashion-MNIST)

def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def fashion_mnist(root: Path, per_class_train: int, per_class_test: int, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, per, prefix in (("train", per_class_train, "train"), ("test", per_class_test, "t10k")):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per)
        rng.shuffle(labels)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels
        out[split] = (images, labels)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            blob = idx_bytes(arr)
            name = f"{prefix}-{kind}"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
    return out


def ldam_reference(labels, imb_factor: float, rand_number: int):
    """LDAM-DRW's IMBALANCECIFAR code path, written out as published (global numpy RNG)."""
    targets_np = np.array(labels, dtype=np.int64)
    cls_num = len(np.unique(targets_np))
    img_max = len(targets_np) / cls_num
    np.random.seed(rand_number)
    img_num_per_cls = [int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))) for cls_idx in range(cls_num)]
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return img_num_per_cls, np.concatenate(selected)

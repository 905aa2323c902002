"""Write a seeded per-class subset of Fashion-MNIST's official *train* idx files (test set copied whole).

The `fashion-mnist-lt` plugin builds its long tail as LDAM does, from n_max = (train images) / classes:
with all 6,000 images per class and imbalance factor 100 the tail class keeps 60 images, so no class is
few-shot (< 20) and an epoch is ~15k images. Capping every class at N first (N = 1000 here) keeps the
imbalance factor exactly 100 (counts 1000 ... 10) with many-, medium- and few-shot classes all present
and an epoch of ~2.5k images. The images are Fashion-MNIST's own; only which ones are kept changes.

    python scripts/fashion_mnist_subset.py OUT_DIR --per-class 1100 --seed 0 [--source DIR] [--samples DIR]

--samples DIR also writes the first test image of each class as a PNG (`hgltr predict` input).
"""
from __future__ import annotations

import argparse
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

from hgltr_plugins.datasets.fashion_mnist_lt import CLASS_NAMES, FILES, _file, find_dir, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array).tobytes())


def sample_indices(src: Path) -> list[int]:
    """Index of the first test image of each class; fails before anything is written if a class has none."""
    y = read_idx(_file(src, FILES["test_labels"]))
    firsts = []
    for c in range(len(CLASS_NAMES)):
        hits = np.flatnonzero(y == c)
        if not len(hits):
            raise SystemExit(f"--samples: no test image of class {c} ({CLASS_NAMES[c]}) in {src}; "
                             "use the full official test set or drop --samples")
        firsts.append(int(hits[0]))
    return firsts


def write_samples(src: Path, out: Path, indices: list[int]) -> None:
    """The first test image of each class as `test-<index>-<class>.png` (the true class in the name)."""
    from PIL import Image

    x = read_idx(_file(src, FILES["test_images"]))
    out.mkdir(parents=True, exist_ok=True)
    for i, name in zip(indices, CLASS_NAMES):
        Image.fromarray(x[i]).save(out / f"test-{i:05d}-{name.replace('/', '-').replace(' ', '_')}.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default=None, help="folder with the idx files (default: Debian's)")
    ap.add_argument("--samples", type=Path, default=None, help="write one test image per class here as PNG")
    a = ap.parse_args(argv)
    src = find_dir(a.source)
    x = read_idx(_file(src, FILES["train_images"]))
    y = read_idx(_file(src, FILES["train_labels"]))
    rng = np.random.default_rng(a.seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < a.per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images (< --per-class {a.per_class})")
        keep.append(np.sort(rng.choice(idx, a.per_class, replace=False)))
    keep = np.sort(np.concatenate(keep))
    firsts = sample_indices(src) if a.samples else None
    a.out.mkdir(parents=True, exist_ok=True)
    write_idx(a.out / FILES["train_images"], x[keep])
    write_idx(a.out / FILES["train_labels"], y[keep].astype(np.uint8))
    for stem in ("test_images", "test_labels"):
        f = _file(src, FILES[stem])
        shutil.copyfile(f, a.out / f.name)
    if a.samples:
        write_samples(src, a.samples, firsts)
    print(f"{a.out}: {len(keep)} train images ({a.per_class} per class, seed {a.seed}) + the official test set",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

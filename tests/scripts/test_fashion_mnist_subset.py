"""scripts/fashion_mnist_subset.py (the demo's per-class cap) on generated idx files, and demo.sh's syntax."""
from __future__ import annotations

import gzip
import importlib.util
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("fashion_mnist_subset", REPO / "scripts" / "fashion_mnist_subset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _idx(path: Path, a: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()
    (path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw)) if gz else path.write_bytes(raw))


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "src"
    d.mkdir()
    y = np.repeat(np.arange(10, dtype=np.uint8), 12)
    rng.shuffle(y)
    x = rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8)
    _idx(d / "train-images-idx3-ubyte", x, gz=True)
    _idx(d / "train-labels-idx1-ubyte", y, gz=True)
    _idx(d / "t10k-images-idx3-ubyte", x[:7], gz=False)
    _idx(d / "t10k-labels-idx1-ubyte", y[:7], gz=False)
    return d, x, y


def test_per_class_cap_keeps_real_rows(source, tmp_path):
    mod = _load()
    from hgltr_plugins.datasets.fashion_mnist_lt import load_fashion_mnist_lt, read_idx

    d, x, y = source
    out = tmp_path / "out"
    assert mod.main([str(out), "--per-class", "5", "--seed", "3", "--source", str(d)]) == 0
    sx, sy = read_idx(out / "train-images-idx3-ubyte"), read_idx(out / "train-labels-idx1-ubyte")
    assert np.bincount(sy, minlength=10).tolist() == [5] * 10
    rows = {r.tobytes(): lab for r, lab in zip(x, y)}
    assert all(rows[r.tobytes()] == lab for r, lab in zip(sx, sy))  # every kept image is a source image, same label
    assert (out / "t10k-labels-idx1-ubyte").read_bytes() == (d / "t10k-labels-idx1-ubyte").read_bytes()
    again = tmp_path / "again"
    mod.main([str(again), "--per-class", "5", "--seed", "3", "--source", str(d)])
    assert (again / "train-images-idx3-ubyte").read_bytes() == (out / "train-images-idx3-ubyte").read_bytes()

    # the dataset plugin reads it: LT counts from n_max = 5 per class
    from types import SimpleNamespace
    from hgltr_plugins.datasets.fashion_mnist_lt import FashionMNISTLTConfig
    src = load_fashion_mnist_lt(SimpleNamespace(root=str(out)), FashionMNISTLTConfig(imbalance_factor=5, val_per_class=0))
    assert src.train_counts[0] == 5 and src.train_counts[-1] == 1


def test_cap_above_class_size_fails(source, tmp_path):
    d, *_ = source
    with pytest.raises(SystemExit, match="only 12 images"):
        _load().main([str(tmp_path / "o"), "--per-class", "13", "--source", str(d)])


def test_demo_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "demo.sh")], check=True)


def test_samples_writes_first_test_image_of_each_class(source, tmp_path):
    from PIL import Image

    d, x, y = source
    # a test set holding every class, the first image of class c at a known index
    tx, ty = x[::-1].copy(), y[::-1].copy()
    _idx(d / "t10k-images-idx3-ubyte", tx, gz=False)
    _idx(d / "t10k-labels-idx1-ubyte", ty, gz=False)
    samples = tmp_path / "samples"
    assert _load().main([str(tmp_path / "out"), "--per-class", "5", "--source", str(d), "--samples", str(samples)]) == 0
    from hgltr_plugins.datasets.fashion_mnist_lt import CLASS_NAMES

    files = sorted(samples.iterdir())
    assert len(files) == 10 and all(f.suffix == ".png" for f in files)
    for c, name in enumerate(CLASS_NAMES):
        i = int(np.flatnonzero(ty == c)[0])
        f = samples / f"test-{i:05d}-{name.replace('/', '-').replace(' ', '_')}.png"
        assert np.array_equal(np.asarray(Image.open(f)), tx[i])  # the real pixels, lossless


def test_samples_with_a_class_missing_from_test_fails_clearly(source, tmp_path):
    d, x, y = source
    keep = y != 9
    _idx(d / "t10k-images-idx3-ubyte", x[keep], gz=False)
    _idx(d / "t10k-labels-idx1-ubyte", y[keep], gz=False)
    with pytest.raises(SystemExit, match="no test image of class 9"):
        _load().main([str(tmp_path / "o"), "--per-class", "5", "--source", str(d), "--samples", str(tmp_path / "s")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()  # nothing half-written

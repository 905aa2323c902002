"""The four dataset plugins, loaded through their entry points, on generated real-format data."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import datagen
from hgltr_cli.config import build_layers, resolve
from hgltr_cli.data.source import DatasetSource, long_tail_counts
from hgltr_cli.errors import HgltrError
from hgltr_cli.plugins import load_plugins
from hgltr_cli.settings import DatasetSection, TrainConfig


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(warn=False)


def make(plugins, name, root=None, **opts):
    comp = plugins.get("datasets", name)
    options = comp.config(**opts)
    if hasattr(options, "validate"):
        options.validate()
    return comp.factory(DatasetSection(name=name, root=str(root) if root else None), options)


def test_all_four_registered_with_typed_configs(plugins):
    reg = plugins.registry("datasets")
    for name in ("imagefolder", "split-file", "cifar100-lt", "fashion-mnist-lt"):
        comp = reg.get(name)
        assert comp.config is not None and comp.description
    failures = [f for f in plugins.failures if f.plugin.startswith("dataset-")]
    assert failures == []


def test_plugin_options_resolve_as_config_keys(plugins):
    cfg = resolve(TrainConfig, build_layers(None, None, {"dataset.name": "cifar100-lt"},
                                            ["dataset.imbalance_factor=50", "dataset.root=/data"]), plugins=plugins)
    assert cfg.dataset.root == "/data" and cfg.options["dataset"].imbalance_factor == 50.0
    with pytest.raises(HgltrError, match="imbalance_factr"):
        resolve(TrainConfig, build_layers(None, None, {"dataset.name": "cifar100-lt"},
                                          ["dataset.imbalance_factr=50"]), plugins=plugins)


# ---------------------------------------------------------------- imagefolder

def test_imagefolder_split_layout(tmp_path, plugins):
    datagen.image_tree(tmp_path / "train", {"cat": 5, "dog": 2, "ant": 1})
    datagen.image_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    datagen.image_tree(tmp_path / "test", {"cat": 2, "ant": 1})
    (tmp_path / "train" / "cat" / ".DS_Store").write_text("x")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    src = make(plugins, "imagefolder", tmp_path)
    assert isinstance(src, DatasetSource)
    assert src.class_names == ["ant", "cat", "dog"]
    assert src.train_counts == [1, 5, 2]
    assert len(src.split("val")) == 2 and len(src.split("test")) == 3
    assert src.groups(many_above=4, few_below=2) == ["few", "many", "medium"]
    assert src.split("train").load(0).mode == "RGB"


def test_imagefolder_flat_layout_holds_out_seeded_val(tmp_path, plugins):
    datagen.image_tree(tmp_path, {"a": 10, "b": 20})
    src = make(plugins, "imagefolder", tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4)
    again = make(plugins, "imagefolder", tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert src.split("val").paths == again.split("val").paths
    assert np.bincount(src.split("test").labels).tolist() == [1, 2]
    assert np.bincount(src.split("val").labels).tolist() == [int(0.2 * 9), int(0.2 * 18)]
    parts = [set(src.split(s).paths) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 30 and len(set.union(*parts)) == 30
    assert any("held out" in n for n in src.notes)


def test_imagefolder_errors(tmp_path, plugins):
    with pytest.raises(HgltrError, match="needs a data root"):
        make(plugins, "imagefolder", None)
    with pytest.raises(HgltrError, match="does not exist"):
        make(plugins, "imagefolder", tmp_path / "missing")
    datagen.image_tree(tmp_path / "train", {"cat": 2})
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(HgltrError, match="hold no images.*empty"):
        make(plugins, "imagefolder", tmp_path)
    (tmp_path / "train" / "empty").rmdir()
    datagen.image_tree(tmp_path / "val", {"cot": 1})
    with pytest.raises(HgltrError, match="'cot' \\(did you mean 'cat'"):
        make(plugins, "imagefolder", tmp_path)


# ---------------------------------------------------------------- split-file

def _lt_files(root: Path, lines: dict[str, list[str]]):
    for name, ls in lines.items():
        (root / name).write_text("\n".join(ls) + "\n")


def test_split_file_imagenet_lt_layout(tmp_path, plugins):
    for wnid in ("n01", "n02"):
        for i in range(3):
            datagen.save_image(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", fmt="JPEG")
    datagen.save_image(tmp_path / "val" / "v 1.JPEG", fmt="JPEG")  # a space in the path
    _lt_files(tmp_path, {
        "ImageNet_LT_train.txt": [f"train/n01/n01_{i}.JPEG 0" for i in range(3)] + ["train/n02/n02_0.JPEG 1"],
        "ImageNet_LT_val.txt": ["val/v 1.JPEG 1"],
        "ImageNet_LT_test.txt": ["# comment", "", "train/n02/n02_1.JPEG 1", "/train/n02/n02_2.JPEG 1"],
    })
    src = make(plugins, "split-file", tmp_path, benchmark="imagenet-lt")
    assert src.class_names == ["n01", "n02"]  # from the parent folders
    assert src.train_counts == [3, 1]
    assert src.split("val").paths == [str(tmp_path / "val" / "v 1.JPEG")]
    assert len(src.split("test")) == 2
    assert src.split("test").source(0).endswith("(ImageNet_LT_test.txt:3)")
    assert src.split("test").load(1).mode == "RGB"  # a leading '/' is relative to the root (Places-LT)


def test_split_file_class_names_and_inat_layout(tmp_path, plugins):
    for i in range(20):
        datagen.save_image(tmp_path / "img" / f"{i}.png")
    _lt_files(tmp_path, {"iNaturalist18_train.txt": [f"img/{i}.png {i % 2}" for i in range(16)],
                         "iNaturalist18_val.txt": [f"img/{i}.png {i % 2}" for i in range(16, 20)],
                         "names.txt": ["1 Felis catus", "0 Canis lupus"]})
    src = make(plugins, "split-file", tmp_path, benchmark="inat2018", class_names="names.txt", val_fraction=0.25)
    assert src.class_names == ["Canis lupus", "Felis catus"]
    assert len(src.split("test")) == 4  # the official val list is the test split
    assert np.bincount(src.split("val").labels).tolist() == [2, 2]  # held out of train
    assert src.train_counts == [6, 6]
    (tmp_path / "plain.txt").write_text("zero\none\n")
    assert make(plugins, "split-file", tmp_path, benchmark="inat2018", class_names="plain.txt").class_names == \
        ["zero", "one"]


def test_split_file_label_out_of_range_names_file_and_line(tmp_path, plugins):
    datagen.save_image(tmp_path / "a.png")
    _lt_files(tmp_path, {"train.txt": ["a.png 0", "a.png 1", "a.png 2"], "names.txt": ["x", "y"]})
    with pytest.raises(HgltrError, match=r"train.txt, line 3: label 2 is out of range \(labels must be 0..1\)"):
        make(plugins, "split-file", tmp_path, class_names="names.txt")


def test_split_file_malformed_and_missing(tmp_path, plugins):
    datagen.save_image(tmp_path / "a.png")
    _lt_files(tmp_path, {"train.txt": ["a.png 0", "a.png zero"]})
    with pytest.raises(HgltrError, match="train.txt, line 2: expected 'relative/path label'"):
        make(plugins, "split-file", tmp_path)
    _lt_files(tmp_path, {"train.txt": ["b.png 0"]})
    with pytest.raises(HgltrError, match="b.png .*does not exist"):
        make(plugins, "split-file", tmp_path)
    with pytest.raises(HgltrError, match="training list"):
        make(plugins, "split-file", tmp_path, train_list="nope.txt")
    _lt_files(tmp_path, {"train.txt": ["a.png 0"]})
    with pytest.raises(HgltrError, match="test list"):
        make(plugins, "split-file", tmp_path, test_list="custom_test.txt")
    (tmp_path / "names.txt").write_bytes("caf\xe9\n".encode("latin-1"))  # not UTF-8: a clean error, no traceback
    with pytest.raises(HgltrError, match="class-name file .*names.txt is not UTF-8"):
        make(plugins, "split-file", tmp_path, class_names="names.txt")


# ---------------------------------------------------------------- cifar100-lt

@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, datagen.cifar100(root, per_class_train=20, per_class_test=2)


def test_cifar100_lt_counts_names_and_ldam_subset(cifar, plugins):
    root, gen = cifar
    imb, seed = 10, 3
    src = make(plugins, "cifar100-lt", root, imbalance_factor=imb, seed=seed, val_per_class=2)
    assert src.class_names == gen["names"]
    assert src.train_counts == long_tail_counts(20, 100, imb)
    _, ref_idx = datagen.ldam_reference(gen["train"][1], 1 / imb, seed)
    assert src.split("train").indices.tolist() == ref_idx.tolist()  # the same records as LDAM's code
    train = src.split("train")
    img = np.asarray(train.load(5))
    assert img.shape == (32, 32, 3) and img[0, 0, 0] == train.labels[5]  # CHW planes decoded as HWC
    val = src.split("val")
    assert not set(val.indices.tolist()) & set(train.indices.tolist())
    assert len(src.split("test")) == 200


def test_cifar100_lt_reads_the_archive(tmp_path, plugins):
    datagen.cifar100(tmp_path, per_class_train=4, per_class_test=1, archive=True)
    src = make(plugins, "cifar100-lt", tmp_path, imbalance_factor=2, val_per_class=0)
    assert src.train_counts == long_tail_counts(4, 100, 2) and not src.has_split("val")


def test_cifar100_lt_refuses_a_malicious_pickle(tmp_path, plugins):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    (folder / "test").write_bytes(pickle.dumps({}, protocol=2))
    with pytest.raises(HgltrError, match="refusing to load (posix|os).system"):
        make(plugins, "cifar100-lt", tmp_path)
    assert not marker.exists()
    (folder / "train").write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated
    with pytest.raises(HgltrError, match="not a readable CIFAR-100 file"):
        make(plugins, "cifar100-lt", tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(HgltrError, match="no CIFAR-100 files"):
        make(plugins, "cifar100-lt", tmp_path / "elsewhere")


# ---------------------------------------------------------------- fashion-mnist-lt

def test_fashion_mnist_lt_from_idx_files(tmp_path, plugins):
    gen = datagen.fashion_mnist(tmp_path / "gz", per_class_train=30, per_class_test=3, gz=True)
    src = make(plugins, "fashion-mnist-lt", tmp_path / "gz", imbalance_factor=10, seed=1, val_per_class=5)
    assert src.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert src.train_counts == long_tail_counts(30, 10, 10)
    _, ref_idx = datagen.ldam_reference(gen["train"][1], 1 / 10, 1)
    assert src.split("train").indices.tolist() == ref_idx.tolist()
    img = src.split("test").load(0)
    assert img.mode == "RGB" and img.size == (28, 28) and img.getpixel((0, 0))[0] == src.split("test").labels[0]
    datagen.fashion_mnist(tmp_path / "raw", per_class_train=30, per_class_test=3, gz=False)
    raw = make(plugins, "fashion-mnist-lt", tmp_path / "raw", imbalance_factor=10, seed=1, val_per_class=5)
    assert raw.train_counts == src.train_counts


def test_fashion_mnist_bad_files(tmp_path, plugins):
    datagen.fashion_mnist(tmp_path, per_class_train=3, per_class_test=1, gz=False)
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(HgltrError, match="truncated or corrupt"):
        make(plugins, "fashion-mnist-lt", tmp_path)
    p.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(HgltrError, match="bad magic"):
        make(plugins, "fashion-mnist-lt", tmp_path)
    with pytest.raises(HgltrError, match="apt-get install -y dataset-fashion-mnist"):
        make(plugins, "fashion-mnist-lt", tmp_path / "nowhere")
    (tmp_path / "g").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / "g" / (name + ".gz")).write_bytes(b"not gzip")
    with pytest.raises(HgltrError, match="not a valid gzip"):
        make(plugins, "fashion-mnist-lt", tmp_path / "g")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_lt_debian_location_found_automatically(plugins):
    src = make(plugins, "fashion-mnist-lt")  # no root: the Debian folder
    assert src.train_counts == long_tail_counts(6000, 10, 100)
    assert len(src.split("test")) == 10000
    assert src.split("val").labels.tolist().count(1) == 100

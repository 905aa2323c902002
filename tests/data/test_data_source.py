"""DatasetSource contract, class groups and the long-tail helpers (LDAM's subset reproduced)."""
from __future__ import annotations

import numpy as np
import pytest

import datagen
from hgltr_cli.data.source import (ArraySplit, DatasetSource, FileSplit, class_groups, long_tail_counts,
                                   long_tail_indices, long_tail_with_val, stratified_holdout)
from hgltr_cli.errors import HgltrError


def test_class_groups_boundaries():
    counts = [101, 100, 20, 19, 0]
    assert class_groups(counts) == ["many", "medium", "medium", "few", "few"]
    assert class_groups(counts, few_inclusive=True) == ["many", "medium", "few", "few", "few"]
    assert class_groups([11, 10, 5, 4], many_above=10, few_below=5) == ["many", "medium", "medium", "few"]
    with pytest.raises(HgltrError, match="few_below"):
        class_groups([1], many_above=5, few_below=10)


@pytest.mark.parametrize("imb,k,n_max", [(100, 100, 500), (50, 100, 500), (10, 10, 6000), (100, 10, 37)])
def test_long_tail_counts_follow_the_formula(imb, k, n_max):
    expected = [int(n_max * ((1.0 / imb) ** (c / (k - 1.0)))) for c in range(k)]
    assert long_tail_counts(n_max, k, imb) == expected
    assert long_tail_counts(n_max, k, imb)[0] == n_max


def test_step_imbalance():
    assert long_tail_counts(500, 10, 10, "step") == [500] * 5 + [int(500 * 0.1)] * 5


def test_indices_equal_ldam_code_path():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 40)
    rng.shuffle(labels)
    for seed in (0, 7):
        ref_counts, ref_idx = datagen.ldam_reference(labels, 1 / 20, seed)
        kept, _ = long_tail_indices(labels, long_tail_counts(40, 10, 20), seed)
        assert long_tail_counts(40, 10, 20) == ref_counts
        assert np.array_equal(np.concatenate(kept), ref_idx)


def test_long_tail_with_val_holds_out_unused_images():
    labels = np.repeat(np.arange(5), 30)
    train, val, notes = long_tail_with_val(labels, 5, 10, seed=1, val_per_class=4)
    counts = long_tail_counts(30, 5, 10)
    assert np.bincount(labels[train], minlength=5).tolist() == counts  # exactly LDAM's counts
    assert not set(train) & set(val)
    # class 0 keeps all of its images in train, so it has no unused ones for val
    assert np.bincount(labels[val], minlength=5).tolist() == [min(4, 30 - n) for n in counts]
    assert notes and "exactly" in notes[0]
    train2, val2, _ = long_tail_with_val(labels, 5, 10, seed=1, val_per_class=4, exact_counts=False)
    assert np.bincount(labels[val2], minlength=5).tolist() == [4] * 5
    assert np.bincount(labels[train2], minlength=5)[0] == counts[0] - 4
    assert not set(train2) & set(val2)


def test_stratified_holdout_is_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    kept, held = stratified_holdout(labels, 0.3, seed=5)
    kept2, held2 = stratified_holdout(labels, 0.3, seed=5)
    assert np.array_equal(held, held2) and np.array_equal(kept, kept2)
    assert not set(kept) & set(held) and len(kept) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=3).tolist() == [3, 1, 0]  # the 1-image class stays in train


def _source(labels_train, names=("a", "b"), **splits):
    tr = FileSplit([f"/x/{i}.png" for i in range(len(labels_train))], labels_train,
                   [f"train.txt:{i + 1}" for i in range(len(labels_train))])
    return DatasetSource("t", list(names), {"train": tr, **splits})


def test_source_counts_groups_and_splits():
    src = _source([0, 0, 0, 1])
    assert src.train_counts == [3, 1] and src.num_classes == 2
    assert src.groups(many_above=2, few_below=2) == ["many", "few"]
    with pytest.raises(HgltrError, match="no test split"):
        src.split("test")
    with pytest.raises(HgltrError, match="unknown split"):
        src.split("dev")
    s = src.summary()
    assert s["splits"] == {"train": 4} and s["train_counts"]["imbalance"] == 3


def test_out_of_range_label_names_file_and_line():
    with pytest.raises(HgltrError, match=r"label 2 of /x/2.png \(train.txt:3\) is out of range"):
        _source([0, 1, 2])


def test_empty_class_and_duplicate_names_are_errors():
    with pytest.raises(HgltrError, match="no training images: b"):
        _source([0, 0])
    with pytest.raises(HgltrError, match="duplicate class names: a"):
        _source([0, 1], names=("a", "a"))


def test_array_split_sources_and_subset():
    imgs = np.zeros((4, 5, 5), np.uint8)
    imgs[:, 0, 0] = np.arange(4)
    s = ArraySplit(imgs, [0, 1, 0, 1], "file.idx").subset([3, 1])
    assert s.source(0) == "file.idx#3" and s.labels.tolist() == [1, 1]
    im = s.load(0)
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (3, 3, 3)

"""Transforms, seeded samplers (DDP shards, class-balanced) and loaders (workers, bad images)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import datagen
from hgltr_cli.data.images import BadImageError, BadImageReport
from hgltr_cli.data.loader import EpochSampler, build_loader, distributed_sampler
from hgltr_cli.data.source import ArraySplit, FileSplit
from hgltr_cli.data.transforms import eval_transform, train_transform
from hgltr_cli.errors import HgltrError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def _array_split(n=24, k=3, size=20, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArraySplit(imgs, np.arange(n) % k, "mem")


def test_eval_transform_normalises_with_the_given_stats():
    from PIL import Image
    x = eval_transform(8, MEAN, STD)(Image.new("RGB", (30, 20), (255, 0, 51)))
    assert x.shape == (3, 8, 8)
    expected = [(c / 255 - m) / s for c, m, s in zip((255, 0, 51), MEAN, STD)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)


def test_eval_transform_resize_then_center_crop():
    from PIL import Image
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255  # right half white: the center crop of the resized image is half/half
    x = eval_transform(10, (0, 0, 0), (1, 1, 1))(Image.fromarray(arr))
    assert x.shape == (3, 10, 10)
    assert x[0, :, 0].max() < 0.1 and x[0, :, -1].min() > 0.9
    with pytest.raises(HgltrError):
        eval_transform(10, MEAN, STD, resize_size=5)
    with pytest.raises(HgltrError):
        eval_transform(0, MEAN, STD)


def test_train_transform_is_random_but_seedable():
    from PIL import Image
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    t = train_transform(16, MEAN, STD)
    torch.manual_seed(1)
    a = t(img)
    torch.manual_seed(1)
    b = t(img)
    c = t(img)
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_identical_for_any_worker_count_and_on_resume():
    split = _array_split()
    t = train_transform(12, MEAN, STD)
    l0 = build_loader(split, t, batch_size=5, seed=3, workers=0)
    l2 = build_loader(split, t, batch_size=5, seed=3, workers=2)
    assert l2.loader.persistent_workers and l2.loader.num_workers == 2 and l0.loader.num_workers == 0
    e0, e1 = _batches(l0, 0), _batches(l0, 1)
    for (xa, ya), (xb, yb) in zip(e0, _batches(l2, 0)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(e1, _batches(l2, 1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # a fresh loader jumping straight to epoch 1 (a resumed run) sees the same batches
    fresh = build_loader(split, t, batch_size=5, seed=3, workers=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e1, _batches(fresh, 1)))
    assert not torch.equal(e0[0][0], e1[0][0])  # epochs differ
    assert sum(len(y) for _, y in e0) == len(split)
    # the caller's RNG is untouched by the loader's per-sample seeding
    torch.manual_seed(42)
    expected = torch.rand(1)
    torch.manual_seed(42)
    _batches(l0, 0)
    assert torch.equal(torch.rand(1), expected)


def test_sequential_eval_loader_keeps_order():
    split = _array_split(n=7)
    loader = build_loader(split, eval_transform(8, MEAN, STD), batch_size=3, sampler="sequential", drop_last=True)
    ys = torch.cat([y for _, y in loader])
    assert ys.tolist() == split.labels.tolist()


@pytest.mark.parametrize("mode", ["random", "class-balanced"])
def test_ddp_shards_partition_the_global_order(mode):
    labels = np.arange(10) % 3
    world = 4
    shards = [distributed_sampler(labels, r, world, mode=mode, seed=9) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
    lists = [s.indices() for s in shards]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) == len(shards[0]) == -(-10 // world)
    single = EpochSampler(labels, mode, seed=9)
    single.set_epoch(2)
    glob = single.indices()
    interleaved = [lists[r][i] for i in range(len(lists[0])) for r in range(world)]
    assert interleaved[:10] == glob  # rank r takes positions r, r+W, ... of the same global order


def test_ddp_sequential_has_no_duplicates():
    labels = np.arange(10) % 2
    parts = [distributed_sampler(labels, r, 3, mode="sequential").indices() for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    with pytest.raises(HgltrError):
        distributed_sampler(labels, 3, 3)


def test_class_balanced_sampler_draws_classes_uniformly():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    s = EpochSampler(labels, "class-balanced", seed=0, num_samples=6000)
    freq = Counter(int(labels[i]) for i, _ in s.indices())
    for c in range(3):
        assert abs(freq[c] / 6000 - 1 / 3) < 0.03
    assert len(s) == 6000


def test_bad_image_raises_in_main_process_with_path(tmp_path):
    good = [datagen.save_image(tmp_path / f"g{i}.png") for i in range(3)]
    bad = datagen.truncated_jpeg(tmp_path / "broken.jpg")
    split = FileSplit(good + [bad], [0, 1, 0, 1])
    for workers in (0, 2):
        loader = build_loader(split, eval_transform(8, MEAN, STD), batch_size=2, sampler="sequential",
                              workers=workers)
        with pytest.raises(BadImageError) as info:
            list(loader)
        assert str(bad) in info.value.message and "skip_bad_images" in info.value.hint


def test_skip_bad_images_skips_and_reports(tmp_path):
    good = [datagen.save_image(tmp_path / f"g{i}.png") for i in range(3)]
    bads = [datagen.zero_byte(tmp_path / "z.png"), datagen.corrupt(tmp_path / "c.png")]
    split = FileSplit(good + bads, [0, 1, 0, 1, 0])
    report = BadImageReport()
    loader = build_loader(split, eval_transform(8, MEAN, STD), batch_size=2, sampler="sequential",
                          skip_bad_images=True, report=report)
    for _ in range(2):  # two epochs: files are listed once, hits counted twice
        ys = torch.cat([y for _, y in loader])
        assert ys.tolist() == [0, 1, 0]
    assert report.count == 2 and report.hits == 4
    assert set(report.files) == {str(b) for b in bads}


def test_all_bad_batch_is_skipped(tmp_path):
    split = FileSplit([datagen.zero_byte(tmp_path / "z.png"), datagen.save_image(tmp_path / "g.png")], [0, 1])
    loader = build_loader(split, eval_transform(8, MEAN, STD), batch_size=1, sampler="sequential",
                          skip_bad_images=True)
    assert [y.tolist() for _, y in loader] == [[1]]
    assert loader.report.count == 1


def test_loader_argument_errors():
    with pytest.raises(HgltrError):
        build_loader(_array_split(), None, batch_size=0)
    with pytest.raises(HgltrError):
        build_loader(_array_split(), None, batch_size=2, workers=-1)
    with pytest.raises(HgltrError):
        EpochSampler([0, 1], "weird")


def test_batch_normalisation_equals_per_sample_transform():
    """build_loader's uint8-then-normalise-per-batch path gives exactly the per-sample tensors."""
    from hgltr_cli.data.loader import ImageDataset, collate_skipping
    split = _array_split(n=6)
    t = train_transform(12, MEAN, STD)
    smp = EpochSampler(split.labels, "random", seed=5)
    smp.set_epoch(3)
    fast = build_loader(split, t, batch_size=6, sampler=smp)  # a ready sampler is accepted
    x_fast, y_fast = next(iter(fast))
    slow = ImageDataset(split, t)  # per-sample ToTensor + Normalize
    x_slow, y_slow, bad = collate_skipping([slow[k] for k in smp.indices()])
    assert not bad and x_fast.dtype == torch.float32
    assert torch.equal(x_fast, x_slow) and torch.equal(y_fast, y_slow)

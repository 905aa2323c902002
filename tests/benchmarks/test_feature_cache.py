"""The `--peft none` feature cache: cached features give exactly what recomputing them gives."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from offline_fixtures import _offline, plugins  # noqa: E402,F401 (pytest fixtures)


def _engine(plugins, peft="none", precision="fp32"):
    from benchmarks.train_bench import EngineBench
    return EngineBench("hgltr-tiny-vit", peft, 6, precision, 10, plugins, torch.device("cpu"))


def test_cacheable_only_for_a_frozen_image_encoder(plugins):
    from hgltr_cli.engine.feature_cache import FeatureCache, cacheable

    assert cacheable(_engine(plugins, "none").model)
    adapted = _engine(plugins, "adapter").model
    assert not cacheable(adapted)
    with pytest.raises(ValueError):
        FeatureCache.for_model(adapted, 10)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cached_features_equal_recomputed(plugins, precision):
    """Loss and gradients from cached z == from the model's own forward on the same images."""
    from hgltr_cli.engine.feature_cache import FeatureCache, cached_forward
    from hgltr_cli.engine.runtime import autocast

    eng = _engine(plugins, "none", precision)
    model, tr = eng.model, eng.trainer
    model.train()
    cache = FeatureCache.for_model(model, 20)
    idx = torch.tensor([3, 7, 11, 0, 19, 5])
    dev = torch.device("cpu")
    cache.encode(model, eng.images, idx, autocast(dev, precision))
    assert not cache.complete()

    params = [p for p in model.parameters() if p.requires_grad]

    def loss_grads(use_cache):
        for p in params:
            p.grad = None
        with autocast(dev, precision):
            logits, z = cached_forward(model, cache.lookup(idx)) if use_cache else model(eng.images)
            text = model.aligned_text()
        from hgltr_cli.engine.hgltr_terms import dis_sums, mse_sums
        loss = (tr.parts.loss_fn(logits.float(), eng.targets)
                + mse_sums(z, text, tr.S, eng.targets, tr.nontail).total
                + dis_sums(logits, tr.S, eng.targets, tr.nontail).total)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    l0, g0 = loss_grads(False)
    l1, g1 = loss_grads(True)
    assert torch.equal(l0, l1)
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)


class _IndexSplit:
    """Images whose pixels spell their own index (R = i % 256, G = i // 256)."""

    def __init__(self, n, classes=4):
        self.labels = np.arange(n) % classes

    def __len__(self):
        return len(self.labels)

    def load(self, i, draft_size=None):
        return Image.new("RGB", (4, 4), (i % 256, i // 256, 0))

    def source(self, i):
        return f"mem#{i}"


@pytest.mark.parametrize("accum,start", [(1, 0), (2, 3)])
def test_epoch_index_batches_follow_the_loader(accum, start):
    """The cache's index batches are exactly the samples of the engine loader's micro-batches."""
    from hgltr_cli.data.transforms import ImageTransform
    from hgltr_cli.engine.feature_cache import epoch_index_batches
    from hgltr_cli.engine.feed import Layout, train_loader

    split = _IndexSplit(29)
    layout = Layout(8, 1, accum).check()
    tf = ImageTransform([], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for epoch in (0, 1):
        loaded = []
        for images, _ in train_loader(split, tf, layout, 0, 5, epoch, start, "random"):
            px = (images[:, :, 0, 0] * 255).round().long()
            loaded.append((px[:, 0] + 256 * px[:, 1]).numpy())
        ours = list(epoch_index_batches(split, layout, 0, 5, epoch, "random", start))
        assert len(ours) == len(loaded) > 0
        for a, b in zip(ours, loaded):
            assert np.array_equal(a, b)

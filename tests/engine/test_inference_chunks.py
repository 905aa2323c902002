"""CPU inference forwards run in pixel-budgeted chunks (faster, measured in benchmarks) with the same logits."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hgltr_cli.commands.evaluate import forward_tta
from hgltr_cli.engine.runtime import CPU_INFERENCE_PIXELS, inference_chunk, inference_logits


class Recording(nn.Module):
    """(logits, features) like HGLTRModel; remembers each forward's batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.head = nn.Linear(4, 5)
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        z = self.conv(x).mean((2, 3))
        return self.head(z), z


def test_chunk_follows_a_pixel_budget_on_cpu():
    assert inference_chunk(torch.zeros(64, 3, 224, 224)) == CPU_INFERENCE_PIXELS // (224 * 224)
    assert inference_chunk(torch.zeros(64, 3, 64, 64)) == CPU_INFERENCE_PIXELS // (64 * 64)
    assert inference_chunk(torch.zeros(2, 3, 4000, 4000)) == 1
    assert inference_chunk(torch.zeros(64, 3, 224, 224, device="meta")) == 64  # accelerators: whole batch


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_chunked_logits_equal_one_forward(tta):
    model = Recording().eval()
    size = 112
    per = CPU_INFERENCE_PIXELS // (size * size)
    images = torch.randn(per * 2 + 3, 3, size, size)
    with torch.no_grad():
        whole = model(images)[0].float()
        if tta == "flip":
            whole = (whole + model(torch.flip(images, dims=[3]))[0].float()) / 2
        model.sizes.clear()
        chunked = forward_tta(model, images, tta)
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert model.sizes == [per, per, 3] * (2 if tta == "flip" else 1)


def test_five_crop_views_are_chunked_too():
    model = Recording().eval()
    images = torch.randn(20, 5, 3, 224, 224)  # 100 views of 224 px
    with torch.no_grad():
        out = forward_tta(model, images, "five-crop")
    assert out.shape == (20, 5) and max(model.sizes) == inference_chunk(images.flatten(0, 1))
    assert sum(model.sizes) == 100


def test_small_images_keep_one_forward():
    model = Recording().eval()
    with torch.no_grad():
        inference_logits(model, torch.randn(64, 3, 64, 64))
    assert model.sizes == [64]

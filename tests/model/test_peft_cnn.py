"""PEFT on a CNN trunk: the EfficientNet-Lite0 of `quickstart-effnet-minilm` (random init, `pretrained none`).

adapter (residual adapters after blocks) and lora (LoRA on the 1x1 convs) must start at the
pre-trained function, train, keep the backbone (BatchNorm statistics included) frozen, and LoRA
must merge; ViT-only methods fail with a clear message.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hgltr_cli.errors import HgltrError
from model_fixtures import _offline, plugins  # noqa: F401 (pytest fixtures)
from hgltr_cli.model import build_model
from hgltr_cli.model.peft_api import block_out_channels, cnn_blocks, pointwise_convs

MODEL = "quickstart-effnet-minilm"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat"]
SIZE = 64  # any size works for the CNN; small keeps the tests fast


@pytest.fixture
def make(plugins):
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    def build(peft: str, **opts):
        cfg = resolve(TrainConfig, [{"peft": {"name": peft, **opts}, "model": {"name": MODEL, "pretrained": "none"}}],
                      plugins=plugins)
        torch.manual_seed(0)
        return build_model(cfg, CLASSES, "cpu", encode_text=False, plugins=plugins)

    return build


def _images(n=4, seed=1):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _peft_params(model):
    return list(model.peft.learnable_parameters())


def _randomise_zero_factors(model):
    """Give the zero-initialised factors (adapter `up`, LoRA `B`) values, as training would."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.clip.named_parameters():
            if p.requires_grad and (".up." in n or n.endswith(".B")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_trunk_blocks_found(make):
    model = make("none")
    blocks = cnn_blocks(model.clip.visual)
    # every timm block, in forward order
    expected = [f"blocks.{s}.{i}" for s, stage in enumerate(model.clip.visual.trunk.blocks) for i in range(len(stage))]
    assert [n for n, _ in blocks] == expected
    assert all(pointwise_convs(b) for _, b in blocks)


@pytest.mark.parametrize("peft,opts", [("adapter", {}), ("adapter", {"norm": "none"}), ("lora", {}),
                                       ("lora", {"convs": "pwl"})])
def test_output_unchanged_at_init_and_keys_kept(make, peft, opts):
    x = _images()
    ref = make("none")
    model = make(peft, **opts)
    # the frozen weights keep their open_clip keys: the reference loads them strictly
    ref.clip.load_state_dict(model.backbone_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref.encode_image(x), atol=1e-5, rtol=1e-5)
    assert model.parameter_counts()["peft"] > 0


def test_adapter_count_and_placement(make):
    model = make("adapter", bottleneck=32)
    blocks = [b for _, b in cnn_blocks(model.clip.visual)]
    assert len(model.peft.modules) == len(blocks)
    expected = 0
    for b in blocks:
        c = block_out_channels(b)
        r = min(32, c)
        expected += 2 * c + (c * r + r) + (r * c + c) + 1
        assert b.peft_adapter.down.out_features == r
    assert model.parameter_counts()["peft"] == expected
    assert len(make("adapter", blocks="last:3").peft.modules) == 3


def test_lora_count_and_placement(make):
    rank = 8
    model = make("lora", rank=rank, convs="pwl")
    blocks = [b for _, b in cnn_blocks(model.clip.visual)]
    wrapped = [b.conv_pwl for b in blocks if hasattr(b, "conv_pwl")]
    assert wrapped and all(type(w).__name__ == "LoRAConv1x1" for w in wrapped)
    assert all(isinstance(b.conv_pw, nn.Conv2d) for b in blocks)  # pw untouched when only pwl is asked
    expected = sum(min(rank, w.in_channels, w.out_channels) * (w.in_channels + w.out_channels) for w in wrapped)
    assert model.parameter_counts()["peft"] == expected
    assert all(w.lora.scaling == 1.0 / w.rank for w in wrapped)


@pytest.mark.parametrize("peft", ["adapter", "lora"])
def test_gradients_reach_every_peft_parameter_and_backbone_stays_frozen(make, peft):
    model = make(peft)
    model.train()
    learnable = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    frozen_before = {k: v.clone() for k, v in model.clip.state_dict().items() if k not in learnable}
    assert learnable and all("peft_adapter" in n or ".lora." in n for n in learnable)
    params = [p for _, p in model.learnable_named_parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    x, y = _images(8), torch.arange(8) % len(CLASSES)
    for _ in range(2):  # step 1 moves the zero factors; step 2 then has a gradient everywhere
        opt.zero_grad()
        logits, _ = model(x)
        nn.functional.cross_entropy(logits, y).backward()
        opt.step()
    for p in _peft_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters() if not p.requires_grad)
    after = model.clip.state_dict()
    changed = [k for k, v in frozen_before.items() if not torch.equal(v, after[k])]
    assert not changed, f"frozen tensors moved: {changed[:5]}"
    # BatchNorm statistics are buffers of frozen BN layers: none is a trainable, stat-tracking BatchNorm
    bns = [m for m in model.clip.visual.modules() if "BatchNorm" in type(m).__name__]
    assert bns and all(not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.training for m in bns)
    assert any(k.endswith("running_var") for k in frozen_before)


def test_lora_merge_parity(make):
    model = make("lora", rank=4)
    _randomise_zero_factors(model)
    x = _images()
    with torch.no_grad():
        z = model.encode_image(x)
        weight0 = model.clip.visual.trunk.blocks[1][0].conv_pw.weight.clone()
        model.merge_peft()
        merged = model.encode_image(x)
        assert not torch.equal(model.clip.visual.trunk.blocks[1][0].conv_pw.weight, weight0)
        torch.testing.assert_close(merged, z, atol=1e-4, rtol=1e-4)
        model.peft.unmerge()
        torch.testing.assert_close(model.clip.visual.trunk.blocks[1][0].conv_pw.weight, weight0, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode_image(x), z, atol=1e-5, rtol=1e-5)


def test_trained_adapter_changes_features(make):
    """The branch is really in the forward path (not just registered)."""
    model = make("adapter")
    x = _images()
    with torch.no_grad():
        z0 = model.encode_image(x)
        _randomise_zero_factors(model)
        assert not torch.allclose(model.encode_image(x), z0)


@pytest.mark.parametrize("peft", ["vpt-shallow", "vpt-deep", "lift"])
def test_vit_only_methods_fail_clearly(make, peft):
    with pytest.raises(HgltrError, match="needs a ViT") as exc:
        make(peft)
    assert MODEL in str(exc.value) and "--peft adapter" in (exc.value.hint or "")


def test_bad_lora_convs_option(plugins):
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    with pytest.raises(Exception, match="convs"):
        resolve(TrainConfig, [{"peft": {"name": "lora", "convs": "dw"}, "model": {"name": MODEL}}], plugins=plugins)


@pytest.mark.parametrize("peft", ["adapter", "lora"])
def test_cnn_peft_exports_to_onnx_with_parity(make, plugins, tmp_path, peft):
    """The exported graph of a CNN with PEFT modules loads in onnxruntime and matches PyTorch
    (the channel adapter once traced to a Transpose with negative axes, which ONNX rejects)."""
    pytest.importorskip("onnxruntime")
    from hgltr_cli import bundle as B

    model = make(peft)
    for p in model.peft.learnable_parameters():  # leave the identity init so the adapters act
        nn.init.normal_(p, std=0.05)
    module = B.LogitsOnly(B.inference_model(model)).eval()
    images = _images()
    exporter = plugins.get("exporters", "onnx")
    onnx = exporter.factory(exporter.default_config())
    with torch.no_grad():
        reference = module(images)
        graph = onnx.export(module, images, tmp_path)
        got = onnx.run(tmp_path, graph, images)
    assert torch.allclose(got, reference, atol=1e-4), float((got - reference).abs().max())

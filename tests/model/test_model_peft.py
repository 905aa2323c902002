"""PEFT methods on the tiny ViT: output preservation at init, gradients, frozen backbone, LoRA merge."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hgltr_cli.errors import HgltrError
from model_fixtures import _offline, make_cfg, plugins  # noqa: F401 (pytest fixtures)
from hgltr_cli.model import PeftViTBlock, VisionTrunk, build_model
from hgltr_cli.model.backbone import _instantiate
from hgltr_plugins.models.tiny_vit import tiny_vit_config

CLASSES = ["cat", "dog", "car", "tree", "boat"]

ALL = ["adapter", "lift", "lora", "vpt-shallow", "vpt-deep", "none"]


def _build(make_cfg, plugins, peft, seed=0, **opts):
    torch.manual_seed(seed)  # same seed -> same random backbone (it is built before any PEFT module)
    return build_model(make_cfg(peft, opts), CLASSES, "cpu", plugins=plugins)


def _images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("peft", ["adapter", "lift", "lora"])
def test_output_preserving_at_init(make_cfg, plugins, peft):
    x = _images()
    ref_logits, ref_z = _build(make_cfg, plugins, "none")(x)
    logits, z = _build(make_cfg, plugins, peft)(x)
    torch.testing.assert_close(z, ref_z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("peft", ["vpt-shallow", "vpt-deep"])
def test_vpt_changes_outputs_at_init(make_cfg, plugins, peft):
    """Documented: prompts take part in attention from step 0, so VPT cannot be output-preserving."""
    x = _images()
    _, ref_z = _build(make_cfg, plugins, "none")(x)
    _, z = _build(make_cfg, plugins, peft)(x)
    assert not torch.allclose(z, ref_z, atol=1e-5)


@pytest.mark.parametrize("peft", ALL)
def test_one_step_grads_and_frozen_backbone(make_cfg, plugins, peft):
    model = _build(make_cfg, plugins, peft)
    model.train()
    frozen_before = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    learnable = [p for _, p in model.learnable_named_parameters()]
    opt = torch.optim.SGD(learnable, lr=0.5)
    x, y = _images(8), torch.arange(8) % len(CLASSES)

    def loss_fn():
        logits, z = model(x)
        align = nn.functional.cosine_similarity(z[:, None], model.aligned_text()[None], dim=-1)
        return nn.functional.cross_entropy(logits, y) + align.pow(2).mean()

    loss_fn().backward()
    opt.step()
    opt.zero_grad()
    loss_fn().backward()  # after one step the zero-initialised halves have moved: every tensor gets signal
    for name, p in model.learnable_named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{peft}: no gradient for {name}"
    for name, p in model.clip.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    after = model.backbone_state_dict()
    assert after.keys() == frozen_before.keys()
    for k, v in frozen_before.items():
        assert torch.equal(after[k], v), f"frozen {k} changed"
    counts = model.parameter_counts()
    if peft == "none":
        assert counts["peft"] == 0
    else:
        assert counts["peft"] > 0
    assert counts["learnable"] == counts["peft"] + counts["aligner"] + counts["classifier"]


def test_lora_merge_reproduces_unmerged(make_cfg, plugins):
    model = _build(make_cfg, plugins, "lora", rank=4)
    with torch.no_grad():  # make the deltas non-zero, as after training
        for mod in model.peft.modules:
            mod.lora_q.B.normal_(std=0.5)
            mod.lora_v.B.normal_(std=0.5)
    x = _images()
    before = {k: v.clone() for k, v in model.backbone_state_dict().items()}
    unmerged, _ = model(x)
    model.merge_peft()
    merged, _ = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(v, before[k]) for k, v in model.backbone_state_dict().items())
    model.peft.unmerge()
    for k, v in model.backbone_state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_other_methods_refuse_merge(make_cfg, plugins):
    with pytest.raises(HgltrError, match="cannot be merged"):
        _build(make_cfg, plugins, "adapter").merge_peft()


def test_blocks_option_and_lift_rule(make_cfg, plugins):
    model = _build(make_cfg, plugins, "adapter", blocks="last:1", bottleneck=8)
    d = model.d_m
    assert len(model.peft.modules) == 1
    assert model.parameter_counts()["peft"] == 2 * d + (d * 8 + 8) + (8 * d + d) + 1
    from hgltr_plugins.peft.lift import lift_bottleneck
    assert lift_bottleneck(1000, 12) == 32 and lift_bottleneck(100, 12) == 4 and lift_bottleneck(5, 12) == 1
    with pytest.raises(HgltrError, match="blocks"):
        _build(make_cfg, plugins, "lora", blocks="7")


@pytest.mark.parametrize("peft", ["adapter", "lift", "lora", "vpt-deep"])
def test_unsupported_trunk_is_a_clear_error(plugins, peft):
    method = plugins.get("peft", peft).factory(None)
    trunk = VisionTrunk(kind="timm", visual=nn.Identity(), model_name="some-cnn", detail="timm efficientnet_lite0")
    with pytest.raises(HgltrError, match="needs a ViT"):
        method.apply(trunk)
    plugins.get("peft", "none").factory(None).apply(trunk)  # classifier-only works on any trunk


@pytest.mark.parametrize("peft", ["adapter", "lift", "lora", "vpt-deep"])
def test_peft_on_multihead_attention_blocks(plugins, peft):
    """open_clip's default block (nn.MultiheadAttention) works too; PeftViTBlock reproduces it exactly."""
    torch.manual_seed(0)
    cfg = tiny_vit_config()
    cfg["vision_cfg"]["block_type"] = "default"
    clip = _instantiate(cfg, quick_gelu=False, has_checkpoint=False).eval()
    custom_cfg = tiny_vit_config()
    custom = _instantiate(custom_cfg, quick_gelu=False, has_checkpoint=False)
    assert set(custom.state_dict()) == set(clip.state_dict())  # the custom block keeps the keys
    assert isinstance(clip.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    x = _images()
    ref = clip.visual(x)
    tr = clip.visual.transformer
    for i, b in enumerate(tr.resblocks):
        tr.resblocks[i] = PeftViTBlock(b)
    torch.testing.assert_close(clip.visual(x), ref, atol=1e-5, rtol=1e-5)
    trunk = VisionTrunk(kind="vit", visual=clip.visual, blocks=list(tr.resblocks), width=tr.width,
                        num_heads=tr.resblocks[0].attn.num_heads, patch_size=clip.visual.patch_size, num_classes=5)
    clip.requires_grad_(False)
    method = plugins.get("peft", peft).factory(None)
    method.apply(trunk)
    out = clip.visual(x)
    if peft != "vpt-deep":
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert any(p.grad is not None for p in method.learnable_parameters())

"""Each speed optimisation computes the same function as the plain path it replaces."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(REPO))

from offline_fixtures import _offline, plugins  # noqa: E402,F401 (pytest fixtures)


def _mha_block(width=64, heads=4, seed=0):
    from open_clip.transformer import ResidualAttentionBlock

    from hgltr_cli.model.peft_api import PeftViTBlock

    torch.manual_seed(seed)
    blk = ResidualAttentionBlock(width, heads, batch_first=True)
    for p in blk.parameters():  # non-trivial biases too
        nn.init.normal_(p, std=0.05)
    return PeftViTBlock(blk).requires_grad_(False)


def _run(blk, x, mask=None, fused=True, monkeypatch=None):
    from hgltr_cli.model import peft_api

    monkeypatch.setattr(peft_api, "fused_mha_ok", (lambda a: True) if fused else (lambda a: False))
    x = x.clone().requires_grad_(True)
    y = blk(x, attn_mask=mask)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("mask_kind", [None, "float", "bool", "float3d"])
def test_fused_mha_equals_multihead_attention(monkeypatch, mask_kind):
    """PeftViTBlock's SDPA path for nn.MultiheadAttention blocks == the module's own forward (values and grads)."""
    blk = _mha_block()
    torch.manual_seed(1)
    x = torch.randn(3, 7, 64)
    mask = None
    if mask_kind == "float":
        mask = torch.randn(7, 7)
    elif mask_kind == "bool":
        mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)  # causal: True = not allowed
    elif mask_kind == "float3d":
        mask = torch.randn(3 * 4, 7, 7)
    if mask_kind == "bool":  # the plain path's own conversion differs; compare with MHA's own semantics
        from hgltr_cli.model.peft_api import fused_mha
        h = blk.ln_1(x)
        ref = blk.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(fused_mha(blk.attn, h, mask), ref, atol=1e-5, rtol=1e-5)
        return
    y0, g0 = _run(blk, x, mask, fused=False, monkeypatch=monkeypatch)
    y1, g1 = _run(blk, x, mask, fused=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)


def test_fused_mha_falls_back_where_it_would_differ():
    from hgltr_cli.model.peft_api import fused_mha_ok

    assert fused_mha_ok(nn.MultiheadAttention(16, 2, batch_first=True))
    assert not fused_mha_ok(nn.MultiheadAttention(16, 2, batch_first=False))
    assert not fused_mha_ok(nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True))
    assert not fused_mha_ok(nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=8))
    drop = nn.MultiheadAttention(16, 2, batch_first=True, dropout=0.1)
    assert not fused_mha_ok(drop.train()) and fused_mha_ok(drop.eval())


def test_custom_block_equals_default_block(plugins):
    """hgltr builds ViTs with open_clip's block_type='custom': same keys, same outputs as the default
    nn.MultiheadAttention blocks (the naive reference's model)."""
    from open_clip.model import CLIP

    from hgltr_cli.model.backbone import load_backbone
    from hgltr_plugins.models.tiny_vit import tiny_vit_config

    ours = load_backbone("hgltr-tiny-vit", "none", plugins=plugins).model
    assert type(ours.visual.transformer.resblocks[0]).__name__ == "CustomResidualAttentionBlock"
    default = CLIP(**tiny_vit_config()).eval()
    assert type(default.visual.transformer.resblocks[0].attn) is nn.MultiheadAttention
    default.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), default.encode_image(x), atol=1e-5, rtol=1e-5)


def _tiny_engine(plugins, peft="adapter", precision="fp32", batch=4, seed=0):
    from benchmarks.train_bench import EngineBench
    return EngineBench("hgltr-tiny-vit", peft, batch, precision, 12, plugins, torch.device("cpu"), seed=seed)


@pytest.mark.parametrize("peft", ["adapter", "lora", "vpt-deep", "lift"])
def test_flash_sdpa_equals_math_sdpa(plugins, peft):
    """The engine's loss and gradients with the fused SDPA kernels == the math (unfused) backend."""
    from benchmarks.common import math_sdpa

    eng = _tiny_engine(plugins, peft)
    eng.model.train()
    params = [p for p in eng.model.parameters() if p.requires_grad]

    def loss_and_grads():
        for p in params:
            p.grad = None
        loss, _ = eng.trainer._micro_loss(eng.images, eng.targets, eng.denom)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    l0, g0 = loss_and_grads()
    with math_sdpa():
        l1, g1 = loss_and_grads()
    torch.testing.assert_close(l0, l1, atol=1e-5, rtol=1e-5)
    for a, b in zip(g0, g1):  # random-init gradients can be large: tolerance relative to the tensor's scale
        scale = float(a.abs().max().clamp_min(1.0))
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-3)


@pytest.mark.parametrize("peft", ["adapter", "lora", "vpt-shallow", "none"])
def test_engine_step_equals_naive_reference(plugins, peft):
    """The benchmark compares like with like: hgltr's engine loss (fp32) == the naive plain loop's loss
    (open_clip default blocks, plain losses), and one optimizer step moves the weights the same way."""
    from benchmarks.train_bench import NaiveBench

    eng = _tiny_engine(plugins, peft)
    naive = NaiveBench(eng, plugins)
    assert abs(eng.loss_value() - naive.loss_value()) < 1e-5
    eng.step()
    naive.step()
    ours = dict(eng.model.learnable_named_parameters())
    theirs = {f"clip.{n}": p for n, p in naive.clip.named_parameters() if p.requires_grad}
    theirs.update({f"classifier.{n}": p for n, p in naive.classifier.named_parameters()})
    theirs.update({f"aligner.{n}": p for n, p in naive.aligner.named_parameters()})
    assert set(ours) == set(theirs)
    for n, p in ours.items():
        torch.testing.assert_close(p, theirs[n], atol=1e-5, rtol=1e-4, msg=n)


def test_text_prototypes_not_recomputed_per_step(plugins):
    """Text prototypes are a buffer computed at build time; training steps never call the text tower."""
    eng = _tiny_engine(plugins)
    calls = []
    orig = eng.model.clip.encode_text
    eng.model.clip.encode_text = lambda *a, **k: calls.append(1) or orig(*a, **k)
    before = eng.model.text_features.clone()
    for _ in range(2):
        eng.step()
    assert calls == []
    assert torch.equal(eng.model.text_features, before)


@pytest.mark.parametrize("peft", ["adapter", "lift", "lora", "vpt-deep", "none"])
def test_bf16_keeps_residual_stream_in_bf16_and_matches_fp32(plugins, peft):
    """Under bf16 autocast every block returns bf16 (adapter deltas no longer promote the stream to
    fp32), and the bf16 loss stays within bf16 rounding of the fp32 loss; fp32 is untouched."""
    eng = _tiny_engine(plugins, peft)
    for blk in eng.model.clip.visual.transformer.resblocks:  # non-zero adapters/LoRA so they matter
        for name, p in blk.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
    eng.model.eval()
    dtypes = []
    hooks = [b.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
             for b in eng.model.clip.visual.transformer.resblocks]
    with torch.no_grad():
        ref, _ = eng.model(eng.images)
        assert set(dtypes) == {torch.float32}
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = eng.model(eng.images)
    for h in hooks:
        h.remove()
    assert set(dtypes) == {torch.bfloat16}
    scale = float(ref.abs().max())
    torch.testing.assert_close(low.float(), ref, atol=0.05 * scale, rtol=0.05)

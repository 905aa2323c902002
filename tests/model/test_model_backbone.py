"""Backbone loading: weights files round-trip exactly, TorchScript opt-in, QuickGELU, offline tags, errors."""
from __future__ import annotations

import time

import pytest
import torch
from open_clip.transformer import Attention, QuickGELU

from hgltr_cli.errors import HgltrError
from model_fixtures import _offline, make_cfg, plugins  # noqa: F401 (pytest fixtures)
from hgltr_cli.model import build_model, load_backbone

CLASSES = ["cat", "dog", "car", "tree", "boat"]


def _images(n=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _save(sd, path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("peft", ["adapter", "lora"])
def test_weights_file_roundtrip_is_exact(make_cfg, plugins, tmp_path, suffix, peft):
    torch.manual_seed(0)
    a = build_model(make_cfg(peft), CLASSES, "cpu", plugins=plugins)
    path = tmp_path / f"tiny{suffix}"
    _save(a.backbone_state_dict(), path)
    torch.manual_seed(123)  # different RNG: everything must come from the file and the checkpoint
    b = build_model(make_cfg(peft, pretrained=str(path)), CLASSES, "cpu", plugins=plugins)
    b.load_learnable_state_dict(a.learnable_state_dict())
    x = _images()
    (la, za), (lb, zb) = a(x), b(x)
    assert torch.equal(za, zb) and torch.equal(la, lb)
    assert b.backbone_info.weights_id.startswith("sha256:")
    torch.testing.assert_close(a.text_features, b.text_features, atol=0, rtol=0)


def test_learnable_state_dict_is_small_and_strict(make_cfg, plugins):
    torch.manual_seed(0)
    m = build_model(make_cfg("adapter"), CLASSES, "cpu", plugins=plugins)
    sd = m.learnable_state_dict()
    assert sum(v.numel() for v in sd.values()) == m.parameter_counts()["learnable"]
    assert any(".mlp_adapter." in k for k in sd) and "aligner.proj.weight" in sd and "classifier.weight" in sd
    with pytest.raises(HgltrError, match="does not fit"):
        m.load_learnable_state_dict({**sd, "bogus": torch.zeros(1)})


def test_custom_block_and_frozen(plugins):
    bb = load_backbone("hgltr-tiny-vit", "none", plugins=plugins)
    assert isinstance(bb.model.visual.transformer.resblocks[0].attn, Attention)  # block_type='custom'
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert bb.image_size == (32, 32) and len(bb.mean) == 3 and bb.weights_id == "none"


def test_torchscript_needs_opt_in(plugins, tmp_path):
    bb = load_backbone("hgltr-tiny-vit", "none", plugins=plugins)
    ts = torch.jit.trace(bb.model, (torch.randn(1, 3, 32, 32), bb.tokenizer(["a"])), strict=False, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    ts.save(str(path))
    with pytest.raises(HgltrError, match="allow_torchscript"):
        load_backbone("hgltr-tiny-vit", str(path), plugins=plugins)
    loaded = load_backbone("hgltr-tiny-vit", str(path), allow_torchscript=True, plugins=plugins)
    assert loaded.quick_gelu and "TorchScript" in loaded.quick_gelu_reason  # OpenAI's format -> QuickGELU
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    for k, v in bb.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_quick_gelu_follows_the_weights(plugins, tmp_path):
    bb = load_backbone("hgltr-tiny-vit", "none", plugins=plugins)
    assert not bb.quick_gelu
    plain = tmp_path / "laion" / "weights.safetensors"
    openai = tmp_path / "vit_base_patch16_clip_224.openai" / "open_clip_model.safetensors"
    for p in (plain, openai):
        p.parent.mkdir()
        _save(bb.model.state_dict(), p)
    assert not load_backbone("hgltr-tiny-vit", str(plain), plugins=plugins).quick_gelu
    got = load_backbone("hgltr-tiny-vit", str(openai), plugins=plugins)
    assert got.quick_gelu and isinstance(got.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert not load_backbone("hgltr-tiny-vit", str(openai), quick_gelu=False, plugins=plugins).quick_gelu


def test_offline_tag_fails_fast_with_a_hint(plugins):
    t = time.monotonic()
    with pytest.raises(HgltrError) as exc:
        load_backbone("ViT-B-16", "openai", plugins=plugins)
    assert time.monotonic() - t < 10
    assert "--pretrained /path" in str(exc.value)


@pytest.mark.parametrize("name,pretrained,match", [
    ("ViT-B-61", "none", "Unknown model"),
    ("ViT-B-16", "laion2b_s34b_b88kk", "neither a file nor a known weights tag"),
    ("hgltr-tiny-vit", "/nonexistent/w.safetensors", "does not exist"),
])
def test_user_errors(plugins, name, pretrained, match):
    with pytest.raises(HgltrError, match=match):
        load_backbone(name, pretrained, plugins=plugins)


def test_list_models_leaves_out_what_load_backbone_refuses(plugins):
    """`hgltr list models` offers no CoCa-style architecture: load_backbone refuses those, and both
    use the same predicate (checked on the configs, nothing is built)."""
    import open_clip

    from hgltr_cli.commands.inspect import list_components
    from hgltr_cli.model.backbone import is_supported_config, list_model_names

    names = [r["name"] for r in list_components("models", None, plugins)]
    listed = [n for n in names if n in open_clip.list_models()]
    assert "ViT-B-16" in listed and all(is_supported_config(open_clip.get_model_config(n)) for n in listed)
    assert "coca_ViT-B-32" not in names and "coca_ViT-B-32" not in list_model_names(plugins)
    assert not is_supported_config(open_clip.get_model_config("coca_ViT-B-32"))
    with pytest.raises(HgltrError, match="CoCa-style"):
        load_backbone("coca_ViT-B-32", "none", plugins=plugins)


def test_coca_is_refused_before_its_weights_are_resolved(plugins, monkeypatch):
    """With a weights tag, the refusal comes first: nothing is looked up or fetched for a model
    that cannot be built."""
    from hgltr_cli.model import backbone

    def no_lookup(*a, **k):
        raise AssertionError("weights resolved for a model load_backbone refuses")

    monkeypatch.setattr(backbone, "_resolve_tag", no_lookup)
    with pytest.raises(HgltrError, match="CoCa-style"):
        backbone.load_backbone("coca_ViT-B-32", "laion2b_s13b_b90k", plugins=plugins)


def test_weights_for_another_architecture(plugins, tmp_path):
    other = load_backbone("hgltr-tiny-vit", "none", plugins=plugins).model.state_dict()
    other = {k: v for k, v in other.items() if not k.startswith("visual.proj")}
    path = tmp_path / "w.pt"
    torch.save(other, path)
    with pytest.raises(HgltrError, match="do not fit architecture"):
        load_backbone("hgltr-tiny-vit", str(path), plugins=plugins)


def test_pickle_is_refused(plugins, tmp_path):
    import argparse
    path = tmp_path / "evil.pt"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # an arbitrary pickled object, not a tensor
    with pytest.raises(HgltrError, match="weights_only") as exc:
        load_backbone("hgltr-tiny-vit", str(path), plugins=plugins)
    assert "pickled Python objects" in exc.value.message
    assert "weights_only=False" not in exc.value.message  # torch's advice; hgltr never does that

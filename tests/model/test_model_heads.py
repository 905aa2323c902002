"""Text side and heads: prompts, cached z_t, h_t size, text-initialised classifier, summary, counts."""
from __future__ import annotations

import json

import pytest
import torch

from hgltr_cli.errors import HgltrError
from model_fixtures import _offline, make_cfg, plugins  # noqa: F401 (pytest fixtures)
from hgltr_cli.model import TextAligner, build_model, model_summary, prompts_for

CLASSES = ["cat", "dog", "car", "tree", "boat"]


def test_h_t_size_formula():
    d_t, d_m = 512, 768
    assert sum(p.numel() for p in TextAligner(d_t, d_m).parameters()) == 2 * d_t + d_t * d_m + d_m == 395_008


def test_prompts_from_names_and_hierarchy():
    assert prompts_for(["tench"], "paper") == ["a photo of a tench"]
    assert prompts_for(["tench"], "plain") == ["a photo of tench"]
    assert prompts_for(["tench"], "itap of a {name}.") == ["itap of a tench."]

    class FakeHierarchy:
        def prompts(self, template):
            return [f"{template}:x", f"{template}:y"]
    assert prompts_for(FakeHierarchy(), "paper") == ["paper:x", "paper:y"]
    with pytest.raises(HgltrError, match="template"):
        prompts_for(["a"], "fancy")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_classifier_starts_as_zero_shot_clip(make_cfg, plugins, kind):
    """logits_k * |P z^_k| / |z P| (linear) or / (scale / |z|) ... equal CLIP's zero-shot cosine."""
    torch.manual_seed(0)
    m = build_model(make_cfg("adapter", classifier=kind, cosine_scale=30.0), CLASSES, "cpu", plugins=plugins)
    x = torch.randn(6, 3, 32, 32)
    logits, z = m(x)
    P = m.visual_projection
    col = torch.nn.functional.normalize(m.text_features, dim=-1) @ P.t()  # (K, d_m) before normalising
    zs = m.zero_shot_logits(x)
    if kind == "linear":
        rebuilt = logits * col.norm(dim=-1) / (z @ P).norm(dim=-1, keepdim=True)
    else:
        rebuilt = logits / 30.0 * z.norm(dim=-1, keepdim=True) * col.norm(dim=-1) / (z @ P).norm(dim=-1, keepdim=True)
        assert torch.all(m.classifier.weight.norm(dim=-1) - 1 < 1e-5)
    torch.testing.assert_close(rebuilt, zs, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(m.classifier.bias if kind == "linear" else torch.zeros(1)) == 0
    assert m.aligned_text().shape == (len(CLASSES), m.d_m)


def test_text_features_cached_by_model_weights_prompts(make_cfg, plugins, tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from hgltr_cli.model.backbone import load_backbone
    sd = load_backbone("hgltr-tiny-vit", "none", plugins=plugins).model.state_dict()
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(w))
    cache = tmp_path / "run"
    a = build_model(make_cfg("none", pretrained=str(w)), CLASSES, "cpu", cache_dir=cache, plugins=plugins)
    files = list(cache.glob("text-*.safetensors"))
    assert len(files) == 1
    import open_clip.model as ocm

    def boom(*a, **k):
        raise AssertionError("text encoder ran again")
    monkeypatch.setattr(ocm.CLIP, "encode_text", boom)
    b = build_model(make_cfg("none", pretrained=str(w)), CLASSES, "cpu", cache_dir=cache, plugins=plugins)
    assert torch.equal(a.text_features, b.text_features)
    with pytest.raises(AssertionError, match="ran again"):  # other prompts -> other key
        build_model(make_cfg("none", pretrained=str(w)), CLASSES[:3], "cpu", cache_dir=cache, plugins=plugins)


def test_summary_is_json_and_needs_classes(make_cfg, plugins):
    s = model_summary(make_cfg("lora", {"rank": 4}), CLASSES, plugins=plugins)
    json.dumps(s)
    lp = s["learnable_params"]
    assert s["paper_params"] == lp["peft"] + lp["h_t"] and lp["total"] == lp["peft"] + lp["h_t"] + lp["classifier"]
    assert s["peft"]["name"] == "lora" and s["peft"]["options"]["rank"] == 4 and s["classes"] == 5
    assert s["backbone"]["model"] == "hgltr-tiny-vit" and s["backbone"]["trunk"] == "vit"
    with pytest.raises(HgltrError, match="hierarchy"):
        model_summary(make_cfg("lora"), plugins=plugins)


def test_summary_reads_the_hierarchy_file(make_cfg, plugins, tmp_path):
    hier = pytest.importorskip("hgltr_cli.hierarchy")
    if not hasattr(hier, "Hierarchy") or not hasattr(hier.Hierarchy, "from_paths"):
        pytest.skip("hierarchy construction API not available")
    h = hier.Hierarchy.from_paths([("cat", "cat", ["root", "animal", "cat"]), ("dog", "dog", ["root", "animal", "dog"]),
                                   ("car", "car", ["root", "vehicle", "car"])])
    path = tmp_path / "h.json"
    h.save(path)
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig
    cfg = resolve(TrainConfig, [{"model": {"name": "hgltr-tiny-vit"}, "hierarchy": {"file": str(path)}}], plugins=plugins)
    s = model_summary(cfg, plugins=plugins)
    assert s["classes"] == 3 and "animal" in s["example_prompts"][0]


VIT_B16_PAPER = {  # Table 6 (ImageNet-LT, 1000 classes), paper_params = PEFT + h_t, classifier excluded
    "adapter": (1.60e6, 1.61e6), "lora": (2.75e6, 2.76e6), "vpt-deep": (0.485e6, 0.495e6),
    "vpt-shallow": (0.40e6, 0.41e6),
}


def test_vit_b16_paper_params(make_cfg, plugins, monkeypatch):
    """Full-size ViT-B/16 (random init, construction only) with 1000 classes, built on the meta device:
    the same modules and parameter shapes, nothing allocated or initialised (about 10x faster)."""
    import torch

    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):  # build_model moves the model to "cpu": meta parameters stay where they are
        if any(p.is_meta for p in self.parameters()):
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    names = [f"class {i}" for i in range(1000)]
    L, d, d_t, K = 12, 768, 512, 1000
    h_t = 2 * d_t + d_t * d + d
    r = 64
    expected = {
        "adapter": L * (2 * d + (d * r + r) + (r * d + d) + 1) + h_t,
        "lora": L * (4 * d * r) + h_t,
        "vpt-deep": L * 10 * d + h_t,
        "vpt-shallow": 10 * d + h_t,
        "lift": L * (2 * d + (d * 32 + 32) + (32 * d + d) + 1) + h_t,  # LIFT's rule: r = 2^floor(log2(K/2L)) = 32
        "none": h_t,
    }
    for peft, want in expected.items():
        with torch.device("meta"):
            s = model_summary(make_cfg(peft, name="ViT-B-16", pretrained="none"), names, plugins=plugins)
        assert s["backbone"]["feature_dim"] == d and s["backbone"]["text_dim"] == d_t
        assert s["learnable_params"]["h_t"] == h_t
        assert s["learnable_params"]["classifier"] == K * d + K
        assert s["paper_params"] == want, peft
        lo, hi = VIT_B16_PAPER.get(peft, (0, float("inf")))
        assert lo <= s["paper_params"] <= hi + 5e3, (peft, s["paper_params"])
        print(peft, s["paper_params"])

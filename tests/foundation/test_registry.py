"""Registries, hooks and plugin failure handling on a fresh plugin manager."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from hgltr_cli import hookimpl
from hgltr_cli.errors import DuplicateComponentError, UnknownComponentError
from hgltr_cli.plugins import load_plugins
from hgltr_cli.registry import Registry


@dataclass
class ToyConfig:
    width: int = 3


class ToyPeft:
    @hookimpl
    def register_peft_methods(self, register):
        register("toy-adapter", object, config=ToyConfig, description="A toy adapter.\nSecond line ignored.")
        register("toy-lora", object, description="A toy LoRA.")


class SameNamePeft:
    @hookimpl
    def register_peft_methods(self, register):
        register("toy-adapter", object, description="Clashes with ToyPeft.")


class FailingLoss:
    @hookimpl
    def register_losses(self, register):
        raise RuntimeError("boom in registration")


class OldStylePlugin:
    """A hook implementation that takes no arguments at all still loads (pluggy subsets)."""

    @hookimpl
    def register_commands(self):
        return None


def test_registered_components_are_listed_with_config_and_description():
    plugins = load_plugins(extra=[("toy", ToyPeft())], use_entry_points=False)
    reg = plugins.registry("peft")
    assert reg.names() == ["toy-adapter", "toy-lora"]
    comp = reg.get("toy-adapter")
    assert comp.plugin == "toy"
    assert comp.description == "A toy adapter."
    assert comp.config_fields() == {"width": 3}
    assert reg.names("*lora") == ["toy-lora"]


def test_unknown_name_suggests_close_matches_and_the_list_command():
    plugins = load_plugins(extra=[("toy", ToyPeft())], use_entry_points=False)
    with pytest.raises(UnknownComponentError) as info:
        plugins.get("peft", "toy-adaptr")
    assert "toy-adapter" in str(info.value)
    assert "hgltr list peft" in str(info.value)


def test_duplicate_name_names_both_plugins_and_refuses_the_name(capsys):
    plugins = load_plugins(extra=[("toy", ToyPeft()), ("other", SameNamePeft())], use_entry_points=False)
    err = capsys.readouterr().err
    assert "'toy'" in err and "'other'" in err
    with pytest.raises(DuplicateComponentError) as info:
        plugins.get("peft", "toy-adapter")
    assert "'toy'" in str(info.value) and "'other'" in str(info.value)
    assert plugins.get("peft", "toy-lora").plugin == "toy"  # the rest still works


def test_failing_registration_is_reported_and_others_keep_working(capsys):
    plugins = load_plugins(extra=[("bad", FailingLoss()), ("toy", ToyPeft()), ("old", OldStylePlugin())],
                           use_entry_points=False)
    assert "boom in registration" in capsys.readouterr().err
    described = {p["name"]: p for p in plugins.describe()}
    assert described["bad"]["status"] == "failed"
    assert "boom in registration" in described["bad"]["errors"][0]
    assert described["toy"]["status"] == "ok"
    assert described["toy"]["components"] == {"peft": ["toy-adapter", "toy-lora"]}


def test_registry_rejects_non_dataclass_configs():
    reg = Registry("losses")
    with pytest.raises(TypeError):
        reg.add("x", object, config=dict, plugin="p")

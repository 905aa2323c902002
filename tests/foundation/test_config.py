"""Layered config: defaults < preset < files < flags < --set, with typed validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import pytest
import yaml

from hgltr_cli import hookimpl
from hgltr_cli.config import build_layers, parse_set, resolve
from hgltr_cli.errors import ConfigError
from hgltr_cli.plugins import load_plugins


@dataclass
class RankConfig:
    rank: int = 8
    alpha: float = 1.0


@dataclass
class BottleneckConfig:
    bottleneck: int = 64


class Peft:
    @hookimpl
    def register_peft_methods(self, register):
        register("lora", object, config=RankConfig, description="low rank")
        register("adapter", object, config=BottleneckConfig, description="bottleneck")


@dataclass
class PeftSection:
    COMPONENT_KIND: ClassVar[str] = "peft"
    name: str = "adapter"


@dataclass
class TrainSection:
    lr: float = 0.1
    epochs: int = 10
    optimizer: Literal["sgd", "adamw"] = "sgd"
    output: Optional[str] = None
    milestones: list[int] = field(default_factory=list)
    nesterov: bool = True


@dataclass
class Schema:
    peft: PeftSection = field(default_factory=PeftSection)
    train: TrainSection = field(default_factory=TrainSection)


@pytest.fixture
def plugins():
    return load_plugins(extra=[("toy", Peft())], use_entry_points=False)


def test_defaults_include_the_selected_components_options(plugins):
    cfg = resolve(Schema, [], plugins=plugins)
    assert cfg.to_dict()["peft"] == {"name": "adapter", "bottleneck": 64}
    assert cfg.options["peft"].bottleneck == 64


def test_layers_apply_in_order_and_values_parse_as_yaml(plugins, tmp_path):
    f1 = tmp_path / "a.yaml"
    f1.write_text("train: {lr: 0.5, epochs: 3}\npeft: {name: lora}\n")
    f2 = tmp_path / "b.yaml"
    f2.write_text("train: {epochs: 4}\n")
    layers = build_layers({"train": {"lr": 9.0}}, [str(f1), str(f2)], {"train.output": "runs/x"},
                          ["peft.rank=16", "train.milestones=[3, 6]"])
    cfg = resolve(Schema, layers, plugins=plugins)
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 4 and cfg.train.output == "runs/x"
    assert cfg.train.milestones == [3, 6]
    assert cfg.peft.name == "lora" and cfg.options["peft"].rank == 16


def test_printed_config_reruns_the_same_job(plugins, tmp_path):
    cfg = resolve(Schema, [parse_set("peft.name=lora"), parse_set("train.lr=5e-4")], plugins=plugins)
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(cfg.to_yaml())
    again = resolve(Schema, build_layers(None, [str(dumped)], None, None), plugins=plugins)
    assert again.to_dict() == cfg.to_dict()
    assert again.train.lr == pytest.approx(5e-4)


@pytest.mark.parametrize("item, expected", [
    ("train.lrr=0.1", "train.lr"),  # unknown key: close match named
    ("train.epochs=many", "expected an integer"),
    ("train.optimizer=adam", "'adamw'"),  # literal: allowed values named
    ("train.nesterov=maybe", "true or false"),
    ("peft.rnk=3", "peft"),  # component option unknown for the selected component
    ("trian.lr=1", "'train'"),  # unknown section
])
def test_bad_keys_and_types_name_the_key_and_what_is_expected(plugins, item, expected):
    with pytest.raises(ConfigError) as info:
        resolve(Schema, [parse_set(item)], plugins=plugins)
    assert expected in str(info.value)


def test_option_of_another_component_is_rejected_with_the_valid_options(plugins):
    with pytest.raises(ConfigError) as info:
        resolve(Schema, [{"peft": {"name": "adapter", "rank": 4}}], plugins=plugins)
    assert "bottleneck" in str(info.value)


def test_malformed_yaml_names_the_file_and_line(tmp_path, plugins):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError) as info:
        resolve(Schema, build_layers(None, [str(bad)], None, None), plugins=plugins)
    assert "bad.yaml" in str(info.value) and "line" in str(info.value)


def test_non_mapping_file_and_bad_set_syntax_are_errors(tmp_path, plugins):
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_layers(None, [str(lst)], None, None)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_set("train.lr")
    with pytest.raises(ConfigError, match="does not exist"):
        build_layers(None, [str(tmp_path / "missing.yaml")], None, None)


def test_config_yaml_is_safe_loaded(tmp_path, plugins):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        build_layers(None, [str(evil)], None, None)
    assert yaml.safe_dump({"a": 1})  # sanity: yaml importable


def test_an_empty_section_keeps_earlier_layers(plugins, tmp_path):
    """`train:` with every key commented out adds nothing; it must not erase a preset's or an
    earlier file's values for that section."""
    first = tmp_path / "a.yaml"
    first.write_text("train: {lr: 0.5, epochs: 3}\n")
    empty = tmp_path / "b.yaml"
    empty.write_text("train:\n  # lr: 0.2\npeft:\n")
    cfg = resolve(Schema, build_layers({"train": {"nesterov": False}}, [str(first), str(empty)], None, None),
                  plugins=plugins)
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 3 and cfg.train.nesterov is False
    assert cfg.peft.name == "adapter"


def test_a_scalar_section_is_an_error_naming_it(plugins, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="'train' must be a mapping"):
        resolve(Schema, build_layers(None, [str(bad)], None, None), plugins=plugins)


def test_a_directory_or_unreadable_config_file_is_a_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is a directory"):
        build_layers(None, [str(tmp_path)], None, None)
    locked = tmp_path / "locked.yaml"
    locked.write_text("train: {lr: 1}\n")

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(locked), "read_text", denied)
    with pytest.raises(ConfigError, match="locked.yaml.*cannot be read: Permission denied"):
        build_layers(None, [str(locked)], None, None)


def test_an_option_for_a_component_without_options_says_so(tmp_path):
    @dataclass
    class NoOptions:
        pass

    class Bare:
        @hookimpl
        def register_peft_methods(self, register):
            register("bare", object, config=NoOptions)

    plugins = load_plugins(extra=[("bare", Bare())], use_entry_points=False)
    with pytest.raises(ConfigError) as info:
        resolve(Schema, [{"peft": {"name": "bare", "rank": 4}}], plugins=plugins)
    assert "'bare' options: none" in info.value.message and info.value.hint == "Remove the key."

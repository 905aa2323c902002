"""Layered, typed configuration shared by every command.

A command declares a *schema*: a dataclass whose fields are section dataclasses. Layers
are merged in order — defaults < preset < --config files (in order) < shorthand flags and
--set overrides (in order) — then every key is checked against the schema. A section that
names a plugin component (it has a ``name`` field and ``COMPONENT_KIND``) also accepts the
options of the selected component's config dataclass, with their defaults filled in, so a
printed config re-runs the same job.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from hgltr_cli.errors import ConfigError, close_matches


def load_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """yaml.safe_load a file, turning every failure into an error naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory, not a YAML file.", "Check the path.")
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist.", "Check the path.")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:  # unreadable: permissions, a FIFO gone, an I/O error
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc.strerror or exc}.",
                          "Check the file's permissions.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.",
                          "Fix the syntax (indentation, colons, quotes) and try again.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(p)!r} is not a UTF-8 text file.") from None


def load_config_layer(path: str | Path) -> dict:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (got {type(data).__name__}).",
                          "Start from `hgltr <command> --print-config > config.yaml`.")
    return data


def parse_set(item: str) -> dict:
    """'train.lr=0.1' -> {'train': {'lr': 0.1}} (value parsed as YAML: 7 -> int, true -> bool)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form dotted.key=value.", "Example: --set train.lr=0.05")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} has an empty key.", "Example: --set train.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return dotted_to_nested(key, value)


def dotted_to_nested(key: str, value: Any) -> dict:
    out: dict = {}
    cur = out
    parts = key.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- type checking

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert where lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        hint = close_matches(str(value), [str(a) for a in allowed])
        raise ConfigError(f"config key {key!r}: {value!r} is not allowed; expected one of "
                          f"{', '.join(repr(a) for a in allowed)}."
                          + (f" Did you mean {hint[0]!r}?" if hint else ""))
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass  # try the next member; the error below names the whole union
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}).")
    if origin in (list, tuple):
        if isinstance(value, str) and "," in value:  # --set key=a,b
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}.",
                              f"Write it as a YAML list, e.g. --set {key}='[1, 2]'.")
        args = get_args(tp)
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}.")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r} ({type(value).__name__}).")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads '5e-4' as a string
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r} ({type(value).__name__}).")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r} ({type(value).__name__}).")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build_dataclass(cls: type, data: dict, prefix: str) -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix!r} must be a mapping, got {data!r}.")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        near = close_matches(str(k), types_)
        raise ConfigError(
            f"unknown config key {prefix + '.' + str(k)!r}."
            + (f" Did you mean {', '.join(prefix + '.' + n for n in near)}?" if near else ""),
            f"Keys allowed in {prefix!r}: {', '.join(sorted(types_))}." if types_ else "Remove the key.")
    kwargs = {k: coerce(v, types_[k], f"{prefix}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"config section {prefix!r}: {exc}") from None
    return obj


# ---------------------------------------------------------------- resolving a schema

@dataclasses.dataclass
class ResolvedConfig:
    """The validated config: sections as attributes, component options on `.options`."""

    schema: Any
    options: dict[str, Any]

    def __getattr__(self, item: str) -> Any:
        return getattr(self.schema, item)

    def component_options(self, section: str) -> Any:
        return self.options.get(section)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self.schema):
            sec = getattr(self.schema, f.name)
            d = dataclasses.asdict(sec) if dataclasses.is_dataclass(sec) else sec
            opts = self.options.get(f.name)
            if opts is not None:
                d.update(dataclasses.asdict(opts))
            out[f.name] = d
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve(schema_cls: type, layers: list[dict], plugins=None) -> ResolvedConfig:
    """Merge `layers` over the schema's defaults and validate every key."""
    defaults = dataclasses.asdict(schema_cls())
    section_names = {f.name for f in dataclasses.fields(schema_cls)}
    merged: dict = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"a config layer must be a mapping of sections, got {layer!r}.")
        layer = dict(layer)
        for key, value in layer.items():
            if key not in section_names:
                continue
            if value is None:  # an empty section in YAML ("train:") adds nothing: earlier layers stay
                layer[key] = {}
            elif not isinstance(value, dict):  # a scalar where a section belongs would break the merge
                raise ConfigError(f"config section {key!r} must be a mapping, got {value!r}.",
                                  f"Write it as `{key}:` followed by indented `key: value` lines.")
        merged = deep_merge(merged, layer)
    section_types = _field_types(schema_cls)
    unknown = [k for k in merged if k not in section_types]
    if unknown:
        near = close_matches(str(unknown[0]), section_types)
        raise ConfigError(f"unknown config section {unknown[0]!r}." + (f" Did you mean {near[0]!r}?" if near else ""),
                          f"Sections: {', '.join(section_types)}.")
    sections: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, sec_cls in section_types.items():
        data = deep_merge(defaults.get(name, {}) or {}, merged.get(name, {}))
        kind = getattr(sec_cls, "COMPONENT_KIND", None)
        if kind is None:
            sections[name] = build_dataclass(sec_cls, data, name)
            continue
        own = {f.name for f in dataclasses.fields(sec_cls)}
        base = build_dataclass(sec_cls, {k: v for k, v in data.items() if k in own}, name)
        comp_name = base.name
        extra = {k: v for k, v in data.items() if k not in own}
        if plugins is None:
            from hgltr_cli.plugins import get_plugins
            plugins = get_plugins()
        comp = plugins.get(kind, comp_name) if comp_name else None
        if comp is None or comp.config is None:
            if extra:
                k = next(iter(extra))
                raise ConfigError(f"unknown config key {name + '.' + k!r}: {name} {comp_name!r} takes no options.")
            options[name] = None
        else:
            try:
                options[name] = build_dataclass(comp.config, extra, name)
            except ConfigError as exc:
                exc.message += f" ({name} {comp_name!r} options: {', '.join(comp.config_fields()) or 'none'})"
                raise
        sections[name] = base
    return ResolvedConfig(schema=schema_cls(**sections), options=options)


def build_layers(preset: dict | None, config_files: list[str] | None, shorthands: dict[str, Any] | None,
                 sets: list[str] | None) -> list[dict]:
    """The standard layer order of every command."""
    layers: list[dict] = []
    if preset:
        layers.append(preset)
    for f in config_files or []:
        layers.append(load_config_layer(f))
    for key, value in (shorthands or {}).items():
        if value is not None:
            layers.append(dotted_to_nested(key, value))
    for item in sets or []:
        layers.append(parse_set(item))
    return layers


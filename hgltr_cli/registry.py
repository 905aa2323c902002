"""Name -> component registries, filled by plugins through the register_* hooks.

Like timm's model registry: plain string names, fnmatch globs for listing, and errors that
point to close matches and to the `hgltr list` command that shows everything.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from hgltr_cli.errors import DuplicateComponentError, UnknownComponentError, did_you_mean

# registry kind -> (hook name, `hgltr list` word, human name)
KINDS: dict[str, tuple[str, str, str]] = {
    "datasets": ("register_datasets", "datasets", "dataset"),
    "hierarchies": ("register_hierarchy_sources", "hierarchies", "hierarchy source"),
    "peft": ("register_peft_methods", "peft", "PEFT method"),
    "losses": ("register_losses", "losses", "loss"),
    "exporters": ("register_exporters", "exporters", "exporter"),
    "models": ("register_models", "models", "model"),
}


@dataclass(frozen=True)
class Component:
    """One registered thing: a factory plus its typed config and a one-line description."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None
    description: str
    plugin: str
    extra: dict = field(default_factory=dict)

    def default_config(self) -> Any:
        return self.config() if self.config is not None else None

    def config_fields(self) -> dict[str, Any]:
        """Field name -> default value of the component's config dataclass."""
        if self.config is None:
            return {}
        return dataclasses.asdict(self.config())


class Registry:
    """Components of one kind, keyed by name."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self.human = KINDS[kind][2]
        self._items: dict[str, Component] = {}
        self.conflicts: dict[str, DuplicateComponentError] = {}

    def add(self, name: str, factory: Callable[..., Any], *, config: type | None = None,
            description: str = "", plugin: str = "<unknown>", **extra: Any) -> Component:
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {plugin!r} registered a {self.human} with an empty or non-string name")
        if config is not None and not dataclasses.is_dataclass(config):
            raise TypeError(f"{self.human} {name!r} from plugin {plugin!r}: config must be a dataclass type")
        if name in self._items:
            other = self._items[name].plugin
            err = DuplicateComponentError(
                f"{self.human} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}.",
                "Uninstall or rename one of the two plugins (`hgltr plugins` lists them).",
            )
            self.conflicts[name] = err
            raise err
        comp = Component(self.kind, name, factory, config, description.strip().splitlines()[0] if description else "",
                         plugin, dict(extra))
        self._items[name] = comp
        return comp

    def get(self, name: str) -> Component:
        if name in self.conflicts:  # ambiguous: refuse rather than pick one silently
            raise self.conflicts[name]
        try:
            return self._items[name]
        except KeyError:
            raise UnknownComponentError(
                f"Unknown {self.human} {name!r}.{did_you_mean(name, self._items)}",
                f"Run `hgltr list {KINDS[self.kind][1]}` to see the available ones.",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(sorted(self._items.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._items)

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by an fnmatch glob ('vpt-*', '*lora*')."""
        names = sorted(self._items)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        return names

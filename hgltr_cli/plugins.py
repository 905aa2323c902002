"""Plugin loading: one pluggy PluginManager("hgltr"), entry-point group "hgltr".

Each entry point is loaded and registered in its own try/except so one broken plugin is
reported (stderr warning, `hgltr plugins` lists it as failed) while the rest keep working.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hgltr_cli import hookspecs
from hgltr_cli.errors import DuplicateComponentError
from hgltr_cli.registry import KINDS, Registry

ENTRY_POINT_GROUP = "hgltr"


@dataclass
class PluginFailure:
    plugin: str
    stage: str  # "import" or the hook that raised
    error: str


@dataclass
class Plugins:
    """The loaded plugin manager, the registries it filled and what failed."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    failures: list[PluginFailure] = field(default_factory=list)
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin -> (distribution, version)

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str):
        return self.registries[kind].get(name)

    def describe(self) -> list[dict[str, Any]]:
        """What `hgltr plugins --json` prints: one entry per plugin, failed ones included."""
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda p: p[0]):
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            comps = {kind: [c.name for c in reg if c.plugin == name] for kind, reg in self.registries.items()}
            dist, ver = self.dists.get(name, ("", ""))
            fails = [f for f in self.failures if f.plugin == name]
            out.append({
                "name": name, "distribution": dist, "version": ver, "hooks": hooks,
                "components": {k: v for k, v in comps.items() if v},
                "status": "failed" if fails else "ok",
                "errors": [f"{f.stage}: {f.error}" for f in fails],
            })
        loaded = {e["name"] for e in out}
        for f in self.failures:
            if f.plugin not in loaded:
                dist, ver = self.dists.get(f.plugin, ("", ""))
                out.append({"name": f.plugin, "distribution": dist, "version": ver, "hooks": [],
                            "components": {}, "status": "failed", "errors": [f"{f.stage}: {f.error}"]})
                loaded.add(f.plugin)
        return out


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _warn(message: str) -> None:
    print(f"hgltr: warning: {message}", file=sys.stderr)


def load_plugins(extra: list[tuple[str, Any]] | None = None, use_entry_points: bool = True,
                 warn: bool = True) -> Plugins:
    """Load entry-point plugins (plus `extra` (name, module/object) pairs, for tests)."""
    pm = new_plugin_manager()
    plugins = Plugins(pm=pm, registries={k: Registry(k) for k in KINDS})
    report = _warn if warn else (lambda _m: None)
    if use_entry_points:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            if dist is not None:
                plugins.dists[ep.name] = (dist.metadata["Name"], dist.version)
            try:
                obj = ep.load()
                pm.register(obj, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
                plugins.failures.append(PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}"))
                report(f"plugin {ep.name!r} failed to load ({type(exc).__name__}: {exc}); "
                       "the rest of hgltr keeps working (see `hgltr plugins`).")
    for name, obj in extra or []:
        pm.register(obj, name=name)
    _fill_registries(plugins, report)
    return plugins


def _fill_registries(plugins: Plugins, report) -> None:
    for kind, (hook_name, _word, _human) in KINDS.items():
        caller = getattr(plugins.pm.hook, hook_name)
        registry = plugins.registries[kind]
        for impl in reversed(caller.get_hookimpls()):  # registration order
            def register(name, factory, *, config=None, description="", _plugin=impl.plugin_name, _hook=hook_name,
                         **extra):
                try:
                    return registry.add(name, factory, config=config, description=description, plugin=_plugin, **extra)
                except DuplicateComponentError as exc:  # reported; using the ambiguous name is an error
                    plugins.failures.append(PluginFailure(_plugin, _hook, exc.message))
                    report(exc.message)
                    return None
            try:
                impl.function(**{a: register for a in impl.argnames if a == "register"})
            except Exception as exc:  # noqa: BLE001
                plugins.failures.append(PluginFailure(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}"))
                report(f"plugin {impl.plugin_name!r} failed in {hook_name} ({type(exc).__name__}: {exc}).")


def add_plugin_commands(plugins: Plugins, app) -> None:
    """Let plugins add Typer subcommands; a failing plugin is reported and skipped."""
    for impl in reversed(plugins.pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(**{a: app for a in impl.argnames if a == "app"})
        except Exception as exc:  # noqa: BLE001
            plugins.failures.append(PluginFailure(impl.plugin_name, "register_commands", f"{type(exc).__name__}: {exc}"))
            _warn(f"plugin {impl.plugin_name!r} failed in register_commands ({type(exc).__name__}: {exc}).")


_CACHED: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set (loaded on first use)."""
    global _CACHED
    if _CACHED is None:
        _CACHED = load_plugins()
    return _CACHED


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugin set (tests use a fresh one)."""
    global _CACHED
    _CACHED = plugins


"""The hooks a plugin can implement (pluggy project name "hgltr").

Every hook is a *register* callback: the plugin calls ``register(name, factory,
config=DataclassType, description="one line")`` once per component. Implementations may
accept any subset of a hook's arguments, so adding arguments later never breaks them.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hgltr")
hookimpl = pluggy.HookimplMarker("hgltr")


@hookspec
def register_datasets(register):
    """Register datasets: factory(section, options) -> DatasetSource (docs/datasets.md)."""


@hookspec
def register_hierarchy_sources(register):
    """Register hierarchy sources: factory(options, classes | None) -> Hierarchy (docs/hierarchy.md)."""


@hookspec
def register_peft_methods(register):
    """Register PEFT methods: factory(config) -> object that inserts modules into a backbone."""


@hookspec
def register_losses(register):
    """Register classification losses (L_cls): factory(config, class_counts) -> nn.Module."""


@hookspec
def register_exporters(register):
    """Register exporters: factory(options) -> hgltr_cli.exporting.Exporter (docs/eval-predict-export.md)."""


@hookspec
def register_models(register):
    """Register model architectures beyond open_clip's own (e.g. tiny test models)."""


@hookspec
def register_commands(app):
    """Add Typer subcommands to the `hgltr` app."""

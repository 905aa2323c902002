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
    """Register PEFT methods: factory(options) -> hgltr_cli.model.peft_api.PeftMethod (docs/models.md)."""


@hookspec
def register_losses(register):
    """Register classification losses (L_cls): factory(options, class_counts) -> nn.Module, called as
    loss(logits, targets)."""


@hookspec
def register_exporters(register):
    """Register exporters: factory(options) -> hgltr_cli.exporting.Exporter (docs/eval-predict-export.md)."""


@hookspec
def register_models(register):
    """Register backbones beyond open_clip's own architectures: factory(pretrained=..., device=...) (whichever
    it accepts) -> an open_clip model config dict or a ready CLIP module (docs/architecture.md, docs/models.md)."""


@hookspec
def register_commands(app):
    """Add Typer subcommands to the `hgltr` app."""

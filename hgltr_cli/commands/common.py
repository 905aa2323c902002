"""Options every command shares: --config (repeatable), --set (repeatable), --print-config."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

ConfigOpt = Annotated[Optional[list[str]], typer.Option(
    "--config", "-c", help="YAML config file; repeat to layer several (later files win).",
    show_default=False, rich_help_panel="Config")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override one config key, e.g. --set train.lr=0.05 (repeatable; value parsed as YAML).",
    show_default=False, rich_help_panel="Config")]
PrintConfigOpt = Annotated[bool, typer.Option(
    "--print-config", help="Print the fully resolved config (with every selected component's defaults) "
                           "as YAML and exit.", rich_help_panel="Config")]


def resolve_config(schema_cls: type, *, config: list[str] | None, sets: list[str] | None,
                   shorthands: dict[str, Any], preset: dict | None = None, plugins=None):
    """Resolve a command's config from its layers (defaults < preset < files < flags < --set)."""
    from hgltr_cli.config import build_layers, resolve

    layers = build_layers(preset, config, shorthands, sets)
    return resolve(schema_cls, layers, plugins=plugins)


def print_config_and_exit(resolved) -> None:
    typer.echo(resolved.to_yaml(), nl=False)
    raise typer.Exit(0)


# eval and predict: the batch is what is loaded and scored at once; on CPU the forward passes are
# smaller (hgltr_cli.engine.runtime.inference_chunk)
BATCH_SIZE_HELP = ("Images loaded and scored per batch. On CPU the model sees at most ~16 images of "
                   "224 px per forward pass (faster there; same results).")

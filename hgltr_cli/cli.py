"""The `hgltr` Typer app.

Importing this module must stay cheap: no torch, no open_clip. Each command imports what
it needs inside its body, so `hgltr --help` and `hgltr --version` answer at once.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from hgltr_cli import __version__

BUILTIN_COMMANDS = ("build-hierarchy", "train", "eval", "predict", "export", "plugins", "list")

HELP = """hgltr fine-tunes CLIP for long-tail recognition by injecting a class hierarchy (HGLTR).

Typical flow:

  hgltr build-hierarchy --source wordnet --classes classes.txt --output hier.json

  hgltr train --dataset imagefolder --data-root DATA --hierarchy hier.json --peft adapter --output runs/a

  hgltr eval runs/a   ·   hgltr predict runs/a img.jpg   ·   hgltr export runs/a --format onnx --output out/

Plugins add datasets, hierarchy sources, PEFT methods, losses, exporters and commands:
see `hgltr plugins` and `hgltr list KIND`.
"""


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hgltr {__version__}")
        raise typer.Exit()


def build_app(load_plugin_commands: bool = False, plugins=None) -> typer.Typer:
    """A fresh app; with `load_plugin_commands` the plugins' own subcommands are added."""
    from hgltr_cli.commands import build_hierarchy, evaluate, export, inspect, predict, train

    app = typer.Typer(name="hgltr", help=HELP, no_args_is_help=True, add_completion=False,
                      rich_markup_mode="markdown", pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback()
    def _root(version: Optional[bool] = typer.Option(  # noqa: B008
            None, "--version", "-V", callback=_version_callback, is_eager=True, help="Show the version and exit.")):
        """hgltr: hierarchy-guided long-tail fine-tuning of CLIP."""

    for module in (build_hierarchy, train, evaluate, predict, export, inspect):
        module.register(app)
    if load_plugin_commands:
        from hgltr_cli.plugins import add_plugin_commands, get_plugins

        add_plugin_commands(plugins or get_plugins(), app)
    return app


def _wants_plugin_command(argv: list[str]) -> bool:
    """True when the first word is not a built-in command (so it may be a plugin's)."""
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and words[0] not in BUILTIN_COMMANDS


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    asks_only = not argv or any(a in ("-h", "--help", "-V", "--version") for a in argv)
    if not asks_only and "torch" not in sys.modules:  # OpenMP reads its wait policy when torch loads
        from hgltr_cli.omp_wait import choose_wait_policy

        choose_wait_policy()
    app = build_app(load_plugin_commands=_wants_plugin_command(argv))
    app(args=argv, prog_name="hgltr")


if __name__ == "__main__":
    main()

"""An example third-party hgltr plugin, installable with pip.

It registers:
- a hierarchy source `initial-letter`: groups classes by the first letter of their name
  (a real, if naive, taxonomy: root -> letter -> class);
- a loss `smoothed-ce`: cross-entropy with label smoothing;
- a command `hgltr example-hello`.
"""
from __future__ import annotations

from dataclasses import dataclass

from hgltr_cli import hookimpl


@dataclass
class InitialLetterConfig:
    """Options of the `initial-letter` source (`--set source.case_sensitive=true`)."""

    case_sensitive: bool = False


def initial_letter(config: InitialLetterConfig, classes: list[str] | None = None):
    """A two-level hierarchy: root -> "letter:x" -> class, for the given classes in their order."""
    from hgltr_cli.hierarchy import Hierarchy

    if not classes:
        from hgltr_cli.errors import HgltrError

        raise HgltrError("the initial-letter source needs a class list.", "Pass --classes FILE (one class per line).")
    rows, nodes = [], {}
    for name in classes:
        letter = name[:1] if config.case_sensitive else name[:1].lower()
        nodes[f"letter:{letter}"] = f"{letter}-words"
        rows.append((name, name, ["root", f"letter:{letter}", name]))
    return Hierarchy.from_paths(rows, nodes=nodes, source="initial-letter", source_version="example 0.1",
                                rules={"dag": "tree"})


@dataclass
class SmoothedCEConfig:
    smoothing: float = 0.1


def smoothed_ce(config: SmoothedCEConfig, class_counts: list[int]):
    """Label-smoothed cross-entropy (ignores the class counts)."""
    import torch.nn as nn

    return nn.CrossEntropyLoss(label_smoothing=config.smoothing)


@hookimpl
def register_hierarchy_sources(register):
    register("initial-letter", initial_letter, config=InitialLetterConfig,
             description="Example: group classes by their initial letter.")


@hookimpl
def register_losses(register):
    register("smoothed-ce", smoothed_ce, config=SmoothedCEConfig,
             description="Example: cross-entropy with label smoothing.")


@hookimpl
def register_commands(app):
    @app.command("example-hello")
    def hello(name: str = "world"):
        """Say hello (shows that plugins can add commands)."""
        print(f"hello, {name}, from hgltr-example")

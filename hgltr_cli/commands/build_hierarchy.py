"""`hgltr build-hierarchy`: shell of the command until its capability lands."""
from __future__ import annotations

import typer

from hgltr_cli.console import user_errors
from hgltr_cli.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command("build-hierarchy")
    @user_errors
    def build_hierarchy_cmd():
        """Build a class hierarchy file (paths, LCA distances) from a taxonomy source."""
        raise NotBuiltYet("`hgltr build-hierarchy` is not built yet.", "Track it in the project's issues.")

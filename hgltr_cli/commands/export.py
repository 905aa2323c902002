"""`hgltr export`: shell of the command until its capability lands."""
from __future__ import annotations

import typer

from hgltr_cli.console import user_errors
from hgltr_cli.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command("export")
    @user_errors
    def export_cmd():
        """Export a run directory as a deployable bundle."""
        raise NotBuiltYet("`hgltr export` is not built yet.", "Track it in the project's issues.")

"""`hgltr eval`: shell of the command until its capability lands."""
from __future__ import annotations

import typer

from hgltr_cli.console import user_errors
from hgltr_cli.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def evaluate_cmd():
        """Evaluate a run directory: long-tail, calibration and hierarchy metrics."""
        raise NotBuiltYet("`hgltr eval` is not built yet.", "Track it in the project's issues.")

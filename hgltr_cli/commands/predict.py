"""`hgltr predict`: shell of the command until its capability lands."""
from __future__ import annotations

import typer

from hgltr_cli.console import user_errors
from hgltr_cli.errors import NotBuiltYet


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @user_errors
    def predict_cmd():
        """Predict the top-k classes of images with a run directory or exported bundle."""
        raise NotBuiltYet("`hgltr predict` is not built yet.", "Track it in the project's issues.")

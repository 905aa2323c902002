"""Rich consoles and the error printer shared by all commands."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from rich.console import Console
from rich.markup import escape

from hgltr_cli.errors import HgltrError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable)


def print_error(exc: HgltrError) -> None:
    """Print an error; user text (paths, class names) is escaped so '[' never reads as markup."""
    err.print(f"[bold red]Error:[/] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[yellow]Hint:[/] {escape(exc.hint)}", soft_wrap=True)


def user_errors(fn: F) -> F:
    """Turn HgltrError into a clean message and exit code (no traceback)."""
    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HgltrError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def is_tty() -> bool:
    return sys.stdout.isatty()

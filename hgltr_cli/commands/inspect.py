"""`hgltr plugins` and `hgltr list KIND [GLOB]`: what is installed and registered."""
from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Optional

import typer

from hgltr_cli.console import out, user_errors


class Kind(str, Enum):
    datasets = "datasets"
    hierarchies = "hierarchies"
    peft = "peft"
    losses = "losses"
    exporters = "exporters"
    models = "models"


def list_components(kind: str, pattern: str | None, plugins) -> list[dict]:
    """Registered components of `kind` matching the glob; models also include open_clip's."""
    reg = plugins.registry(kind)
    wanted = set(reg.names(pattern))
    rows = [{"name": c.name, "plugin": c.plugin, "description": c.description,
             "options": c.config_fields()} for c in reg if c.name in wanted]
    if kind == "models":
        import fnmatch

        from hgltr_cli.model.backbone import open_clip_model_names

        known = {r["name"] for r in rows}
        rows += [{"name": n, "plugin": "open_clip", "description": "open_clip architecture", "options": {}}
                 for n in open_clip_model_names() if n not in known and (not pattern or fnmatch.fnmatch(n, pattern))]
    return rows


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    @user_errors
    def plugins_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False):
        """Show installed plugins: distribution, version, hooks, components and failures."""
        from hgltr_cli.plugins import get_plugins

        info = get_plugins().describe()
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        from rich.table import Table

        table = Table(title="hgltr plugins")
        for col in ("plugin", "distribution", "status", "components"):
            table.add_column(col)
        for p in info:
            comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["components"].items())
            status = "[green]ok[/]" if p["status"] == "ok" else "[red]failed[/]\n" + "\n".join(p["errors"])
            table.add_row(p["name"], f"{p['distribution']} {p['version']}".strip(), status, comps)
        out.print(table)

    @app.command("list")
    @user_errors
    def list_cmd(kind: Annotated[Kind, typer.Argument(help="What to list.")],
                 pattern: Annotated[Optional[str], typer.Argument(help="fnmatch glob, e.g. 'vpt-*' or '*ViT-B*'.")] = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False):
        """List registered datasets, hierarchy sources, PEFT methods, losses, exporters or models."""
        from hgltr_cli.plugins import get_plugins

        rows = list_components(kind.value, pattern, get_plugins())
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        table = Table(title=f"hgltr {kind.value}" + (f" matching {pattern!r}" if pattern else ""))
        table.add_column("name", style="bold")
        table.add_column("plugin")
        table.add_column("description")
        table.add_column("options (defaults)")
        for r in rows:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
            table.add_row(r["name"], r["plugin"], r["description"], opts)
        out.print(table)
        if not rows:
            out.print(f"Nothing matches. Run `hgltr list {kind.value}` without a pattern to see everything.")

"""``cdev plugins``: what is installed, where it comes from, what it provides."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cdev.plugins import get_registry


def plugins(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List every plugin: name, version, origin and what it provides.

    Example: cdev plugins --json
    """
    registry = get_registry()
    rows = sorted(registry.plugins.values(), key=lambda p: (p.origin != "built-in", p.name))
    if as_json:
        print(json.dumps([p.as_dict() for p in rows], indent=2))
        return
    table = Table(title="cdev plugins")
    for col in ("name", "version", "origin", "provides", "status"):
        table.add_column(col)
    for p in rows:
        provides = [f"provider {n}" for n in p.providers]
        provides += [f"transport {n}" for n in p.transports]
        provides += [f"command {n}" for n in p.commands]
        status = f"[red]{p.error}[/red]" if p.error else "[green]ok[/green]"
        table.add_row(p.name, p.version, p.origin, "\n".join(provides) or "-", status)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)

"""``cdev session``: inspect a provider and run its known-answer self-test."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cdev.commands.options import ProviderOption
from cdev.errors import EXIT_FAILURE, CdevError, UnavailableError
from cdev.plugins import get_registry
from cdev.provider import AES_CBC, HMAC_SHA256, Provider
from cdev.vectors import Result, run_vectors

app = typer.Typer(
    help="Inspect crypto provider sessions and self-test providers.", no_args_is_help=True
)


def _info(provider: Provider) -> dict[str, object]:
    caps = provider.capabilities()
    out: dict[str, object] = {
        "provider": provider.name,
        "driver": caps.driver,
        "ciphers": {a.name: list(a.key_sizes) for a in caps.ciphers},
        "macs": {a.name: list(a.key_sizes) for a in caps.macs},
        "max_request": caps.max_request,
        "combined_sessions": caps.combined,
    }
    sessions = {}
    for label, kwargs in (
        ("aes-256-cbc", {"cipher": AES_CBC, "key": bytes(32)}),
        ("hmac-sha256", {"mac": HMAC_SHA256, "mac_key": bytes(32)}),
    ):
        with provider.open_session(**kwargs) as s:  # type: ignore[arg-type]
            i = s.info()
        sessions[label] = {
            "name": i.cipher_name or i.mac_name,
            "driver": i.cipher_driver or i.mac_driver,
            "alignmask": i.alignmask,
            "kernel_driver_only": i.kernel_driver_only,
        }
    out["sessions"] = sessions
    return out


@app.command()
def info(
    provider: str = ProviderOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a provider's driver, algorithms and limits (CIOCGSESSINFO where supported).

    Example: cdev session info --provider virtio
    """
    with get_registry().open_provider(provider) as p:
        data = _info(p)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=f"provider {data['provider']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in data.items():
        if k == "sessions":
            for label, s in v.items():  # type: ignore[attr-defined]
                table.add_row(f"session {label}", f"{s['name']} ({s['driver']})")
        elif k != "provider":
            table.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    Console().print(table)


@app.command()
def selftest(
    provider: str = ProviderOption,
    all_providers: bool = typer.Option(
        False, "--all", help="Test every installed provider; unavailable ones are listed."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run NIST SP 800-38A and RFC 4231 vectors through a provider; exit 1 on any failure.

    Example: cdev session selftest --all
    """
    registry = get_registry()
    names = sorted(registry.providers) if all_providers else [provider]
    results: dict[str, list[Result] | str] = {}
    for name in names:
        try:
            with registry.open_provider(name) as p:
                results[name] = run_vectors(p)
        except UnavailableError as exc:
            if not all_providers:
                raise
            results[name] = str(exc)
    failed = any(isinstance(r, list) and not all(x.ok for x in r) for r in results.values())
    if as_json:
        print(
            json.dumps(
                {
                    n: r if isinstance(r, str) else [x.__dict__ for x in r]
                    for n, r in results.items()
                },
                indent=2,
            )
        )
    else:
        table = Table(title="known-answer self-test")
        for col in ("provider", "vector", "operation", "result"):
            table.add_column(col)
        for name, r in results.items():
            if isinstance(r, str):
                table.add_row(name, "-", "-", f"[yellow]unavailable: {r}[/yellow]")
                continue
            for x in r:
                mark = "[green]pass[/green]" if x.ok else f"[red]FAIL[/red] {x.detail}"
                table.add_row(name, x.vector, x.operation, mark)
        Console().print(table)
    tested = [n for n, r in results.items() if isinstance(r, list)]
    if not tested:
        raise CdevError("no provider could be tested", exit_code=2)
    if failed:
        raise typer.Exit(EXIT_FAILURE)


def register(root: typer.Typer) -> None:
    from cdev.commands.session_list import list_sessions

    app.command("list")(list_sessions)
    root.add_typer(app, name="session")

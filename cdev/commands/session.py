"""``cdev session``: what each provider supports, and its known-answer self-test."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cdev.commands.options import ProviderOption
from cdev.errors import EXIT_FAILURE, CdevError, UnavailableError
from cdev.plugins import get_registry
from cdev.provider import (
    AEAD,
    AES_CBC,
    ALGORITHMS,
    CIPHER,
    HMAC_SHA256,
    Provider,
    ProviderError,
)
from cdev.vectors import FAIL, PASS, UNSUPPORTED, Result, run_vectors

app = typer.Typer(
    help="Inspect crypto provider sessions and self-test providers.", no_args_is_help=True
)


def _algorithms(provider: Provider) -> dict[str, dict[str, object]]:
    caps = provider.capabilities()
    out: dict[str, dict[str, object]] = {}
    for name, alg in ALGORITHMS.items():
        entry: dict[str, object] = {"kind": alg.kind, "supported": caps.supports(name)}
        if alg.key_sizes:
            entry["key_sizes"] = list(alg.key_sizes)
        if name in caps.drivers:
            entry["driver"] = caps.drivers[name]
        out[name] = entry
    return out


def _info(provider: Provider) -> dict[str, object]:
    caps = provider.capabilities()
    out: dict[str, object] = {
        "provider": provider.name,
        "driver": caps.driver,
        "ciphers": {a.name: list(a.key_sizes) for a in caps.ciphers},
        "macs": {a.name: list(a.key_sizes) for a in caps.macs},
        "unsupported": list(caps.unsupported),
        "max_request": caps.max_request,
        "combined_sessions": caps.combined,
        "multipart_hash": caps.multipart,
        "algorithms": _algorithms(provider),
    }
    sessions: dict[str, dict[str, object]] = {}
    for label, name, size in (("aes-256-cbc", AES_CBC, 32), ("hmac-sha256", HMAC_SHA256, 32)):
        if not caps.supports(name):
            continue
        kind = ALGORITHMS[name].kind
        try:
            if kind in (CIPHER, AEAD):
                s = provider.open_session(cipher=name, key=bytes(size))
            else:
                s = provider.open_session(mac=name, mac_key=bytes(size))
            with s:
                i = s.info()
        except ProviderError as exc:
            sessions[label] = {"error": str(exc)}
            continue
        sessions[label] = {
            "name": i.cipher_name or i.mac_name,
            "driver": i.cipher_driver or i.mac_driver,
            "alignmask": i.alignmask,
            "kernel_driver_only": i.kernel_driver_only,
        }
    out["sessions"] = sessions
    return out


def _print_info(data: dict[str, object]) -> None:
    table = Table(title=f"provider {data['provider']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in data.items():
        if k == "sessions":
            for label, s in v.items():  # type: ignore[attr-defined]
                text = s.get("error") or f"{s['name']} ({s['driver']})"
                table.add_row(f"session {label}", text)
        elif k == "algorithms":
            for name, a in v.items():  # type: ignore[attr-defined]
                mark = "[green]yes[/green]" if a["supported"] else "[yellow]no[/yellow]"
                extra = f" ({a['driver']})" if "driver" in a else ""
                table.add_row(f"  {name}", mark + extra)
        elif k not in ("provider", "ciphers", "macs", "unsupported"):
            table.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    Console().print(table)


@app.command()
def info(
    provider: str = ProviderOption,
    all_providers: bool = typer.Option(
        False, "--all", help="Every installed provider; unavailable ones say why."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a provider's driver, the algorithms it supports and its limits.

    Example: cdev session info --provider virtio
    """
    registry = get_registry()
    if not all_providers:
        with registry.open_provider(provider) as p:
            data = _info(p)
        if as_json:
            print(json.dumps(data, indent=2))
        else:
            _print_info(data)
        return
    everything: dict[str, dict[str, object]] = {}
    for name in sorted(registry.providers):
        try:
            with registry.open_provider(name) as p:
                everything[name] = _info(p)
        except UnavailableError as exc:
            everything[name] = {"provider": name, "unavailable": str(exc)}
    if as_json:
        print(json.dumps(everything, indent=2))
        return
    for name, data in everything.items():
        if "unavailable" in data:
            Console().print(f"provider {name}: [yellow]unavailable[/yellow]: {data['unavailable']}")
        else:
            _print_info(data)


@app.command()
def selftest(
    provider: str = ProviderOption,
    all_providers: bool = typer.Option(
        False, "--all", help="Test every installed provider; unavailable ones are listed."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run published vectors (NIST, IEEE 1619, FIPS 180, RFC 2202/4231) through a provider.

    Algorithms the provider does not offer are reported unsupported; exit 1 on any
    wrong result.

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
    failed = any(isinstance(r, list) and any(x.status == FAIL for x in r) for r in results.values())
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
        for col in ("provider", "algorithm", "vector", "operation", "result"):
            table.add_column(col)
        marks = {PASS: "[green]pass[/green]", UNSUPPORTED: "[yellow]unsupported[/yellow]"}
        for name, r in results.items():
            if isinstance(r, str):
                table.add_row(name, "-", "-", "-", f"[yellow]unavailable: {r}[/yellow]")
                continue
            for x in r:
                mark = marks.get(x.status, f"[red]FAIL[/red] {x.detail}")
                table.add_row(name, x.algorithm, x.vector, x.operation, mark)
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

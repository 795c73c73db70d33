"""``cdev nodes create|list|remove``: /dev/cryptodevN for the virtio-cryptodev frontend."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cdev import nodes as n
from cdev.errors import CdevError, UsageError

app = typer.Typer(
    name="nodes",
    no_args_is_help=True,
    help=(
        "Create, list and remove the /dev/cryptodevN device nodes of the virtio-cryptodev "
        "guest module (the major is read from /proc/devices).\n\n"
        "Example: cdev nodes create --group crypto --mode 0660"
    ),
)

_ROOT = typer.Option(
    Path("/"), "--root", metavar="DIR", help="Work under DIR instead of / (proc, sys, dev)."
)
_DRY = typer.Option(False, "--dry-run", help="Print what would be done; change nothing.")


def _parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise UsageError(f"--mode must be octal, like 0660; got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise UsageError(f"--mode must be between 0000 and 0777, got {text}")
    return mode


def _report(actions: list[n.Action], dry_run: bool) -> None:
    prefix = "would " if dry_run else ""
    for a in actions:
        print(f"{prefix}{a.describe()}")


@app.command("create")
def create(
    count: int = typer.Option(
        None, "--count", min=0, help="Make cryptodev0..N-1 instead of one node per device present."
    ),
    mode: str = typer.Option("0666", "--mode", help="Permissions of the nodes (octal)."),
    group: str = typer.Option(None, "--group", help="Group owning the nodes (name or gid)."),
    major: int = typer.Option(
        None, "--major", min=1, help="Use this major instead of reading /proc/devices."
    ),
    dry_run: bool = _DRY,
    root: Path = _ROOT,
) -> None:
    """Create /dev/cryptodevN for the devices present (idempotent).

    Example: cdev nodes create --count 4
    """
    perm = _parse_mode(mode)
    gid = n.resolve_group(group)
    wanted = n.wanted_nodes(root, count=count, major=major)
    if not wanted:
        print("no virtio-cryptodev devices present; nothing to create (--count N forces nodes)")
        return
    actions = n.plan_create(root, wanted, perm, gid)
    if not dry_run:
        n.apply(actions, perm, gid)
    _report(actions, dry_run)


@app.command("list")
def list_nodes(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    root: Path = _ROOT,
) -> None:
    """List /dev/cryptodevN nodes and the devices the driver has bound.

    Example: cdev nodes list --json
    """
    try:
        major: int | None = n.read_major(root)
    except CdevError:
        major = None
    devices = {name: minor for name, _, minor in n.present_devices(root)}
    rows = []
    for e in n.existing_nodes(root):
        ok = e.is_char and e.major == major and devices.get(e.path.name) == e.minor
        rows.append({**e.as_dict(), "device_present": e.path.name in devices, "ok": ok})
    if as_json:
        print(json.dumps({"major": major, "devices": sorted(devices), "nodes": rows}, indent=2))
        return
    table = Table(title=f"cryptodev nodes (driver major: {major if major is not None else '-'})")
    for col in ("node", "type", "major:minor", "mode", "uid:gid", "device"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["path"]),
            "char" if r["char_device"] else "[red]not a char device[/red]",
            f"{r['major']}:{r['minor']}",
            str(r["mode"]),
            f"{r['uid']}:{r['gid']}",
            "[green]ok[/green]" if r["ok"] else "[yellow]stale[/yellow]",
        )
    Console().print(table)
    missing = sorted(set(devices) - {Path(str(r["path"])).name for r in rows})
    if missing:
        print(f"devices without a node: {', '.join(missing)} (cdev nodes create)")


@app.command("remove")
def remove(
    all_majors: bool = typer.Option(
        False, "--all", help="Remove every char node named cryptodevN, whatever its major."
    ),
    dry_run: bool = _DRY,
    root: Path = _ROOT,
) -> None:
    """Remove the /dev/cryptodevN nodes of the driver.

    Example: cdev nodes remove --dry-run
    """
    major = None
    if not all_majors:
        try:
            major = n.read_major(root)
        except CdevError as exc:
            raise CdevError(f"{exc}; or remove every cryptodevN node with --all") from None
    actions = n.plan_remove(root, major)
    if not actions:
        print("no cryptodev nodes to remove")
        return
    if not dry_run:
        n.apply(actions)
    _report(actions, dry_run)


def register(root_app: typer.Typer) -> None:
    root_app.add_typer(app, name="nodes")

"""``cdev session list``: the device's open handles and sessions, from the host over QMP
(``--attach``) or from inside a guest through the module's sysfs counters."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cdev.device_state import GuestDevice, HostDevice, guest_state, host_state


def list_sessions(
    attach: str | None = typer.Option(
        None,
        "--attach",
        metavar="QMP_SOCKET|NAME",
        help="The host's view: the QEMU device's state over QMP (NAME as `cdev vm list`). "
        "Without it: this guest's view, from sysfs.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show what is open on the virtio-cryptodev device now: per device counters, and from
    the host each open handle with its sessions (algorithm, age, requests, bytes).

    Example: cdev session list --attach vm
    """
    if attach is not None:
        from cdev.vq_live import resolve

        host = host_state(resolve(attach).qmp)
        if as_json:
            print(json.dumps({"side": "host", "devices": [d.as_dict() for d in host]}, indent=2))
        else:
            _print_host(host)
        return
    guest = guest_state()
    if as_json:
        print(json.dumps({"side": "guest", "devices": [asdict(d) for d in guest]}, indent=2))
    else:
        _print_guest(guest)


def _print_host(devices: list[HostDevice]) -> None:
    console = Console()
    for d in devices:
        counters = Table(title=f"host: {escape(d.path)}", show_header=False)
        counters.add_column("what")
        counters.add_column("value", justify="right")
        counters.add_row("open handles / sessions", f"{len(d.handles)} / {d.session_count}")
        counters.add_row("in flight (workers)", str(d.in_flight))
        counters.add_row("CRYPT inline / worker", f"{d.inline} / {d.worker}")
        counters.add_row("CRYPT bytes answered OK", str(d.crypt_bytes))
        for kind, n in d.requests.items():
            if n:
                counters.add_row(f"  requests {escape(kind)}", str(n))
        for status, n in d.statuses.items():
            if n:
                counters.add_row(f"  status {escape(status)}", str(n))
        console.print(counters)
        table = Table(title="open handles and sessions")
        for col in ("handle", "session", "algorithm", "age (s)", "requests", "bytes"):
            table.add_column(col, justify="left" if col == "algorithm" else "right")
        for h in d.handles:
            table.add_row(f"{h.id:#x}", "", "", f"{h.age_ms / 1000:.1f}", str(h.requests),
                          str(h.bytes))  # fmt: skip
            for s in h.sessions:
                table.add_row("", f"{s.id:#x}", s.algorithm, f"{s.age_ms / 1000:.1f}",
                              str(s.requests), str(s.bytes))  # fmt: skip
        console.print(table)


def _print_guest(devices: list[GuestDevice]) -> None:
    table = Table(title="guest: virtio-cryptodev (sysfs)")
    for col in ("device", "open files", "sessions", "in flight", "completed", "errors"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for d in devices:
        table.add_row(escape(d.name), str(d.open_files), str(d.sessions), str(d.in_flight),
                      str(d.completed), str(d.errors))  # fmt: skip
    Console().print(table)

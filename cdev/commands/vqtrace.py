"""``cdev vq-trace``: show the virtio-cryptodev virtqueue traffic from QEMU's trace log."""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cdev.errors import UnavailableError
from cdev.vq_trace import Exchange, Summary, Tracker, exchanges, qemu_trace_args, read_lines


def _row_style(ex: Exchange) -> str:
    return "green" if ex.status == 0 else "red"


def _table(rows: list[Exchange], title: str) -> Table:
    table = Table(title=title, expand=False)
    for col, just in (
        ("id", "right"),
        ("request", "left"),
        ("handle", "right"),
        ("session", "right"),
        ("len", "right"),
        ("out/in", "right"),
        ("status", "left"),
        ("µs", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for ex in rows:
        lat = ex.latency_us
        table.add_row(
            str(ex.id),
            ex.name,
            f"{ex.ret_handle or ex.handle:#x}",
            f"{ex.ret_session or ex.session:#x}",
            str(ex.len) if ex.cmd == 3 else "",
            f"{ex.out_len}/{ex.in_len}",
            f"[{_row_style(ex)}]{ex.status_name}[/]",
            "" if lat is None else f"{lat:.0f}",
        )
    return table


def _summary_table(s: Summary) -> Table:
    d = s.as_dict()
    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "requests / responses / pending", f"{d['requests']} / {d['responses']} / {d['pending']}"
    )
    table.add_row("notifications (batches), largest", f"{d['batches']}, {d['max_batch']}")
    table.add_row("CRYPT bytes answered OK", str(d["crypt_bytes_ok"]))
    table.add_row("device resets", str(d["resets"]))
    for name, n in sorted(s.by_request.items()):
        table.add_row(f"  {name}", str(n))
    for name, n in sorted(s.by_status.items()):
        table.add_row(f"  status {name}", str(n))
    if d["latency_us_p50"] is not None:
        table.add_row("latency p50 / max (µs)", f"{d['latency_us_p50']} / {d['latency_us_max']}")
    if s.engines:
        table.add_row("engine", ", ".join(s.engines))
    return table


def vq_trace(
    log_file: Path = typer.Argument(
        ...,
        metavar="LOG",
        help="QEMU's log file (-D LOG), written with `-trace virtio_cryptodev_*`.",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading as QEMU writes."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per exchange, then a summary."
    ),
    last: int = typer.Option(20, "--last", min=1, help="Rows kept on screen while following."),
    summary_only: bool = typer.Option(False, "--summary", help="Print only the summary."),
) -> None:
    """Show requests and responses on the device's virtqueue, paired, with a summary.

    QEMU must run with the device's trace events on; `cdev.vq_trace.qemu_trace_args(LOG)`
    gives the arguments: -trace 'virtio_cryptodev_*' -D LOG -msg timestamp=on.

    Example: cdev vq-trace /tmp/qemu-trace.log --follow
    """
    if not log_file.exists():
        args = " ".join(qemu_trace_args(log_file))
        raise UnavailableError(f"{log_file}: no such trace log; start QEMU with {args}")
    tracker = Tracker()
    stream = exchanges(read_lines(log_file, follow=follow), tracker)
    try:
        if as_json:
            for ex in stream:
                if not summary_only:
                    print(json.dumps(ex.as_dict()), flush=follow)
        elif follow:
            rows: deque[Exchange] = deque(maxlen=last)
            with Live(console=Console(), refresh_per_second=8, transient=False) as live:
                for ex in stream:
                    rows.append(ex)
                    live.update(
                        Group(
                            _table(list(rows), f"virtio-cryptodev: {log_file}"),
                            _summary_table(tracker.summary),
                        )
                    )
        else:
            all_rows = list(stream)
            console = Console()
            if not summary_only:
                console.print(_table(all_rows[-last:] if follow else all_rows, str(log_file)))
    except KeyboardInterrupt:
        pass
    if as_json:
        print(json.dumps({"summary": tracker.summary.as_dict()}))
    else:
        Console().print(_summary_table(tracker.summary))
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("vq-trace")(vq_trace)

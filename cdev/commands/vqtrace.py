"""``cdev vq-trace``: the virtio-cryptodev virtqueue traffic, from a saved QEMU log or live
from a running QEMU (``--attach``, over QMP)."""

from __future__ import annotations

import json
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cdev.errors import CdevError, UnavailableError, UsageError
from cdev.vq_trace import (
    CallTotals,
    Exchange,
    Summary,
    Tracker,
    exchanges,
    make_filter,
    qemu_trace_args,
    read_lines,
)

EXIT_INTERRUPTED = 130


def _row_style(ex: Exchange) -> str:
    return "green" if ex.status == 0 else "red"


def _clock(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1e6) % 1_000_000:06d}"


def _table(rows: list[Exchange], title: str) -> Table:
    table = Table(title=escape(title), expand=False)
    for col, just in (
        ("time", "left"),
        ("request", "left"),
        ("handle", "right"),
        ("session", "right"),
        ("algorithm", "left"),
        ("chain", "right"),
        ("bytes", "right"),
        ("status", "left"),
        ("µs", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for ex in rows:
        lat = ex.latency_us
        table.add_row(
            _clock(ex.time),
            ex.name,
            f"{ex.ret_handle or ex.handle:#x}",
            f"{ex.ret_session or ex.session:#x}",
            ex.algorithm,
            ex.chain,
            str(ex.len) if ex.payload or ex.cmd == 3 else "",
            f"[{_row_style(ex)}]{ex.status_name}[/]",
            "" if lat is None else f"{lat:.0f}",
        )
    return table


def _calls_table(totals: CallTotals) -> Table:
    table = Table(title="per call")
    for col in ("call", "count", "errors", "bytes", "p50 µs", "p99 µs"):
        table.add_column(col, justify="left" if col == "call" else "right")
    for name, d in totals.as_dict().items():
        table.add_row(
            f"[bold]{name}[/]" if name == "total" else name,
            str(d["count"]),
            str(d["errors"]),
            str(d["bytes"]),
            "" if d["latency_us_p50"] is None else f"{d['latency_us_p50']:.0f}",
            "" if d["latency_us_p99"] is None else f"{d['latency_us_p99']:.0f}",
        )
    return table


def _summary_table(s: Summary) -> Table:
    d = s.as_dict()
    table = Table(title="device", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "requests / responses / pending", f"{d['requests']} / {d['responses']} / {d['pending']}"
    )
    table.add_row("notifications (batches), largest", f"{d['batches']}, {d['max_batch']}")
    table.add_row("CRYPT bytes answered OK", str(d["crypt_bytes_ok"]))
    table.add_row("device resets", str(d["resets"]))
    for name, n in sorted(s.by_status.items()):
        table.add_row(f"  status {name}", str(n))
    if s.engines:
        table.add_row("engine", escape(", ".join(s.engines)))
    return table


def _check_log(path: Path) -> None:
    """A saved log must be a readable regular file (exit 2 otherwise)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        args = " ".join(qemu_trace_args(path))
        raise UnavailableError(
            f"{path}: no such trace log; start QEMU with {args}, or use --attach"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a directory, not a trace log")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: not a regular file")


class _Stop(Exception):
    """SIGTERM/SIGHUP: leave like Ctrl-C, switching the trace events off first."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def vq_trace(
    log_file: Path | None = typer.Argument(
        None,
        metavar="[LOG]",
        help="QEMU's log file (-D LOG) written with `-trace virtio_cryptodev_*` (= --from).",
    ),
    from_file: Path | None = typer.Option(
        None, "--from", metavar="FILE", help="Replay a saved trace log."
    ),
    attach: str | None = typer.Option(
        None,
        "--attach",
        metavar="QMP_SOCKET|NAME",
        help="Trace a running QEMU live: switch its device events on over QMP until exit, "
        "Ctrl-C or the guest's end. NAME as `cdev vm list` shows.",
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading LOG as QEMU writes."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per request, then a summary."
    ),
    filters: list[str] = typer.Option(
        [],
        "--filter",
        metavar="KEY=V[,V]",
        help="Only these requests (repeatable, all must match): call=OPEN|CLOSE|IOCTL, "
        "cmd=CRYPT|CRYPT/encrypt|SESSION_CREATE|..., status=OK|ERROR|INVAL|..., "
        "session=0x..., handle=0x...",
    ),
    last: int = typer.Option(20, "--last", min=1, help="Rows kept on screen while live."),
    summary_only: bool = typer.Option(False, "--summary", help="Print only the totals."),
    duration: float | None = typer.Option(
        None, "--duration", min=0.0, metavar="SECONDS", help="Live: detach after this long."
    ),
    plot: bool = typer.Option(
        False, "--plot", help="Draw the latency histogram and throughput in the terminal."
    ),
    plot_out: Path | None = typer.Option(
        None, "--plot-out", metavar="FILE.png|svg", help="Save the plots to an image."
    ),
) -> None:
    """Show requests and responses on the device's virtqueue, paired, with totals per call.

    From a saved log (QEMU run with -trace 'virtio_cryptodev_*' -D LOG -msg timestamp=on,
    which `cdev vm run --trace 'virtio_cryptodev_*' --trace-out LOG` does), or live with
    --attach: the events are switched on at run time over QMP and back off on exit.
    Ctrl-C ends a live view (exit 130, after the totals).

    Example: cdev vq-trace --attach vm --filter cmd=CRYPT
    """
    sources = [s for s in (log_file, from_file, attach) if s is not None]
    if len(sources) != 1:
        raise UsageError("give one of LOG, --from FILE or --attach QMP_SOCKET|NAME")
    if attach is not None and follow:
        raise UsageError("--follow is for a log file; --attach is always live")
    if duration is not None and attach is None:
        raise UsageError("--duration is for --attach")
    try:
        keep = make_filter(filters)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if plot_out is not None and plot_out.suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"--plot-out {plot_out}: the name must end in .png or .svg")
    if plot or plot_out is not None:
        from cdev.vq_plot import require_plotting

        require_plotting(terminal=plot, image=plot_out is not None)

    tracker = Tracker()
    totals = CallTotals()
    kept: list[Exchange] = []  # for the plots only
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, _on_signal)
    interrupted = False
    try:
        if attach is not None:
            interrupted = _live(
                attach,
                tracker,
                totals,
                keep,
                kept,
                as_json,
                summary_only,
                last,
                duration,
                want_rows=plot or plot_out is not None,
            )
        else:
            path = log_file or from_file
            assert path is not None
            _check_log(path)
            try:
                lines = read_lines(path, follow=follow)
                interrupted = _replay(
                    path, lines, tracker, totals, keep, kept, as_json, summary_only, follow, last
                )
            except OSError as exc:
                raise CdevError(f"{path}: {exc.strerror or exc}") from None
            if not follow:
                _check_saw_device(path, tracker)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    _print_totals(tracker, totals, as_json)
    if plot or plot_out is not None:
        from cdev.vq_plot import draw_terminal, save_image

        if plot:
            draw_terminal(kept)
        if plot_out is not None:
            save_image(kept, plot_out)
            print(f"vq-trace: plots written to {plot_out}", file=sys.stderr)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _check_saw_device(path: Path, tracker: Tracker) -> None:
    s = tracker.summary
    if not (s.requests or s.responses or s.batches or s.resets or s.engines):
        raise CdevError(f"{path}: no virtio_cryptodev_* trace events (not a trace log?)")


def _print_totals(tracker: Tracker, totals: CallTotals, as_json: bool) -> None:
    if as_json:
        summary = tracker.summary.as_dict()
        summary["calls"] = totals.as_dict()
        print(json.dumps({"summary": summary}), flush=True)
    else:
        console = Console()
        console.print(_calls_table(totals))
        console.print(_summary_table(tracker.summary))
    sys.stdout.flush()


def _emit(
    stream: Iterator[Exchange],
    keep: Callable[[Exchange], bool],
    totals: CallTotals,
    kept: list[Exchange],
    sink: Callable[[Exchange], None],
    want_rows: bool,
) -> None:
    for ex in stream:
        if not keep(ex):
            continue
        totals.add(ex)
        if want_rows and len(kept) < 1_000_000:
            kept.append(ex)
        sink(ex)


def _replay(
    path: Path,
    lines: Iterator[str],
    tracker: Tracker,
    totals: CallTotals,
    keep: Callable[[Exchange], bool],
    kept: list[Exchange],
    as_json: bool,
    summary_only: bool,
    follow: bool,
    last: int,
) -> bool:
    stream = exchanges(lines, tracker)
    try:
        if as_json:
            _emit(stream, keep, totals, kept, _json_sink(summary_only, flush=follow), True)
        elif follow:
            _live_view(stream, keep, totals, kept, tracker, str(path), last, summary_only)
        else:
            rows: list[Exchange] = []
            _emit(stream, keep, totals, kept, rows.append, True)
            _check_saw_device(path, tracker)
            if not summary_only:
                Console().print(_table(rows, str(path)))
    except (KeyboardInterrupt, _Stop):
        return True
    return False


def _json_sink(summary_only: bool, flush: bool) -> Callable[[Exchange], None]:
    def sink(ex: Exchange) -> None:
        if not summary_only:
            print(json.dumps(ex.as_dict()), flush=flush)

    return sink


def _live_view(
    stream: Iterator[Exchange],
    keep: Callable[[Exchange], bool],
    totals: CallTotals,
    kept: list[Exchange],
    tracker: Tracker,
    title: str,
    last: int,
    summary_only: bool,
) -> None:
    rows: deque[Exchange] = deque(maxlen=last)
    console = Console()
    with Live(console=console, refresh_per_second=8, transient=False) as live:

        def sink(ex: Exchange) -> None:
            rows.append(ex)
            parts = [] if summary_only else [_table(list(rows), title)]
            live.update(Group(*parts, _calls_table(totals)))

        _emit(stream, keep, totals, kept, sink, True)


def _live(
    spec: str,
    tracker: Tracker,
    totals: CallTotals,
    keep: Callable[[Exchange], bool],
    kept: list[Exchange],
    as_json: bool,
    summary_only: bool,
    last: int,
    duration: float | None,
    want_rows: bool,
) -> bool:
    from cdev.vq_live import Attachment, resolve

    target = resolve(spec)
    deadline = None if duration is None else time.monotonic() + duration
    err = Console(stderr=True, highlight=False)
    interrupted = False
    with Attachment(target) as att:
        err.print(f"vq-trace: attached to {escape(target.label)} (QEMU pid {target.pid})")
        if att.redirected:
            err.print(f"vq-trace: QEMU's log now goes to {att.log}")
        _seed_sessions(target.qmp, tracker)

        def stop() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        stream = _arrival_stamped(exchanges(att.lines(stop), tracker))
        try:
            if as_json:
                _emit(stream, keep, totals, kept, _json_sink(summary_only, True), want_rows)
            else:
                _live_view(stream, keep, totals, kept, tracker, target.label, last, summary_only)
        except (KeyboardInterrupt, _Stop):
            interrupted = True
        ended = not att.alive()
    err.print("vq-trace: QEMU exited" if ended else "vq-trace: detached, trace events restored")
    return interrupted


def _arrival_stamped(stream: Iterator[Exchange]) -> Iterator[Exchange]:
    """Live: when QEMU runs without ``-msg timestamp=on``, at least say when it came."""
    for ex in stream:
        if ex.ts_response is None:
            ex.ts_seen = time.time()
        yield ex


def register(app: typer.Typer) -> None:
    app.command("vq-trace")(vq_trace)


def _seed_sessions(qmp: Path, tracker: Tracker) -> None:
    """Sessions opened before we attached: their algorithm from the device's own table."""
    from cdev.device_state import host_state

    try:
        devices = host_state(qmp)
    except CdevError:
        return  # a QEMU without the state properties: algorithms show for new sessions
    for dev in devices:
        for h in dev.handles:
            for ses in h.sessions:
                tracker.algorithms[("*", h.id, ses.id)] = ses.algorithm

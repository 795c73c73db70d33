"""``cdev vm``: boot a Debian guest with our QEMU device and module, run a command in it."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cdev.errors import UsageError
from cdev.vm.guest_kernel import ProgressFn

if TYPE_CHECKING:
    from cdev.vm.guest import Guest

DEFAULT_COMMAND = ("cdev", "session", "info", "--provider", "virtio")

vm_app = typer.Typer(
    help="Boot a Debian guest with the virtio-cryptodev device and module, and run commands.",
    no_args_is_help=True,
)


@contextlib.contextmanager
def progress_reporter(label: str) -> Iterator[ProgressFn]:
    """A progress callback drawing one rich bar on stderr (plain lines when not a tty)."""
    err = Console(stderr=True)
    if not err.is_terminal:

        def plain(text: str, fraction: float | None) -> None:
            print(f"{label}: {text}", file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=1.0)

        def report(text: str, fraction: float | None) -> None:
            progress.update(task, description=text, completed=fraction or 0.0)
            if fraction is not None and fraction >= 1.0:
                progress.console.print(f"{label}: {text}")

        yield report


def parse_port(spec: str) -> tuple[int, int]:
    """``HOST:GUEST`` or ``GUEST`` (host port chosen freely) -> (host, guest)."""
    host_s, sep, guest_s = spec.rpartition(":")
    try:
        guest = int(guest_s)
        host = int(host_s) if sep else 0
    except ValueError:
        raise UsageError(f"bad --port {spec!r}: use HOST:GUEST or GUEST") from None
    if not (0 <= host <= 65535 and 1 <= guest <= 65535):
        raise UsageError(f"bad --port {spec!r}: ports are 1..65535 (host 0 = any free port)")
    return host, guest


@vm_app.command(
    "run", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
)
def run(
    command: list[str] | None = typer.Argument(
        None, metavar="[-- COMMAND...]", help="What to run in the guest (default: a smoke check)."
    ),
    qemu: Path | None = typer.Option(
        None, "--qemu", metavar="PATH", help="QEMU binary (default: our build, made if missing)."
    ),
    kernel_version: str | None = typer.Option(
        None,
        "--kernel-version",
        metavar="VER",
        help="Guest kernel ABI (default: the one linux-headers-amd64 installs).",
    ),
    port: list[str] = typer.Option(
        [], "--port", metavar="HOST:GUEST", help="Forward 127.0.0.1:HOST to the guest's GUEST."
    ),
    no_module: bool = typer.Option(False, "--no-module", help="Do not build or load our module."),
    upstream_crypto: bool = typer.Option(
        False, "--upstream-crypto", help="Also add QEMU's upstream virtio-crypto-pci device."
    ),
    accel: str | None = typer.Option(
        None, "--accel", metavar="kvm|tcg", help="Force the accelerator (default: detect)."
    ),
    trace: list[str] = typer.Option(
        [],
        "--trace",
        metavar="PATTERN",
        help="QEMU trace events to log, e.g. 'virtio_cryptodev_*' (see --trace-out).",
    ),
    trace_out: Path | None = typer.Option(
        None, "--trace-out", metavar="FILE", help="Copy the trace log here after the run."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        metavar="NAME",
        help="Register the running VM under NAME, for `cdev vq-trace --attach NAME` "
        "(default: the first free of vm, vm2, ...).",
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the command may run."),
    verbose: bool = typer.Option(False, "--verbose", help="Kernel messages in the console log."),
    keep: bool = typer.Option(
        False, "--keep", help="Keep the VM's work directory (console log, command line)."
    ),
) -> None:
    """Build what is missing (QEMU, guest kernel, module, initramfs), boot, run COMMAND.

    The guest runs the host's own Python and this cdev over a read-only 9p share of the
    host's root; the command's output and exit status are the guest command's.

    Example: cdev vm run --port 7000:7000 -- cdev crypt encrypt --provider virtio f -o f.cdev
    """
    import os

    from cdev.vm.guest import UPSTREAM_VIRTIO_CRYPTO, Guest, GuestTimeout
    from cdev.vm.registry import check_name

    argv = list(command or DEFAULT_COMMAND)
    if name is not None:
        check_name(name)
    # SIGTERM/SIGHUP end the VM like Ctrl-C does: QEMU stopped, work dir and name freed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    ports = [parse_port(p) for p in port]
    if keep:
        os.environ["CDEV_KEEP_VM"] = "1"
    with progress_reporter("vm") as report:
        guest = Guest(
            qemu=qemu,
            kernel_version=kernel_version,
            ports=ports,
            module=False if no_module else None,
            extra_args=UPSTREAM_VIRTIO_CRYPTO if upstream_crypto else (),
            accel=accel,
            trace=trace,
            progress=report,
            verbose=verbose,
            name=name,
        )
        guest.start()
    err = Console(stderr=True, highlight=False)
    try:
        err.print(
            f"vm: booted {guest.release} in {guest.boot_seconds:.1f} s "
            f"({guest.accel}, device: {'yes' if guest.cryptodev else 'no'}, "
            f"module: {_module_state(guest)})"
        )
        err.print(f"vm: name {guest.name}, QMP {guest.qmp_socket}")
        for g, h in sorted(guest.ports.items()):
            err.print(f"vm: 127.0.0.1:{h} -> guest :{g}")
        if keep:
            err.print(f"vm: work directory {guest.workdir}")
        try:
            status, out, errb = guest.run_bytes(argv, timeout=timeout)
        except GuestTimeout as exc:
            sys.stdout.buffer.write(exc.result.stdout)
            sys.stderr.buffer.write(exc.result.stderr)
            raise
        if trace_out is not None:
            _copy_trace(guest, trace_out)
    finally:
        guest.close()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(errb)
    sys.stderr.flush()
    if status < 0:  # killed by a signal in the guest: report it as a shell would
        err.print(f"vm: guest command killed by {signal.Signals(-status).name}")
        status = 128 - status
    raise typer.Exit(status)


@vm_app.command("demo")
def demo(
    size: int = typer.Option(8, "--size", min=1, max=1024, help="MiB for the file round trip."),
) -> None:
    """The whole path end to end: build QEMU and the module, boot, then in the guest run the
    self-test through the device, a file round trip guest(virtio) <-> host(software), an
    encrypted chat between them, and summarize the device's virtqueue trace.

    Example: cdev vm demo
    """
    from rich.table import Table

    from cdev.vm.demo import run_demo

    with progress_reporter("demo") as report:
        steps = run_demo(report, file_size=size << 20)
    table = Table(title="virtio-cryptodev end to end")
    for col in ("step", "result", "seconds", "details"):
        table.add_column(col)
    for st in steps:
        mark = "[green]ok[/green]" if st.ok else "[red]FAILED[/red]"
        table.add_row(st.name, mark, f"{st.seconds:.1f}", st.detail)
    Console().print(table)
    if not all(st.ok for st in steps):
        raise typer.Exit(1)


@vm_app.command("list")
def list_vms(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the running VMs started by cdev: name, QEMU pid, QMP socket, trace log.

    Example: cdev vm list --json
    """
    import json
    import time

    from rich.table import Table

    from cdev.vm.registry import running

    vms = running()
    if as_json:
        print(json.dumps([vm.__dict__ for vm in vms], indent=2))
        return
    table = Table(title="running VMs")
    for col in ("name", "pid", "up (s)", "QMP socket", "trace log"):
        table.add_column(col)
    for vm in vms:
        up = f"{time.time() - vm.started:.0f}"
        table.add_row(vm.name, str(vm.pid), up, vm.qmp, vm.trace_log)
    Console().print(table)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _copy_trace(guest: Guest, dest: Path) -> None:
    import shutil

    if not guest.trace_log.exists():
        raise UsageError("no trace log: give --trace PATTERN too")
    shutil.copyfile(guest.trace_log, dest)
    print(f"vm: trace log written to {dest}", file=sys.stderr)


def _module_state(guest: Guest) -> str:
    if guest.module is None:
        return "none"
    return f"load failed: {guest.module_error}" if guest.module_error else "loaded"


def register(app: typer.Typer) -> None:
    app.add_typer(vm_app, name="vm")

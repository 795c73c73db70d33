"""``cdev qemu``: build Debian's QEMU with the in-tree virtio-cryptodev device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cdev.errors import UnavailableError
from cdev.vm import qemu_build

qemu_app = typer.Typer(
    help="Build and locate the QEMU binary carrying the virtio-cryptodev device.",
    no_args_is_help=True,
)


@qemu_app.command("build")
def build(
    qemu_src: Path | None = typer.Option(
        None,
        "--qemu-src",
        metavar="DIR",
        help="Use this QEMU 7.2 source tree instead of Debian's source package.",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is current."),
    sanitizers: bool = typer.Option(
        False, "--sanitizers", help="Build with ASan/UBSan (cached separately; for fuzzing)."
    ),
) -> None:
    """Fetch, patch, configure and build QEMU; print the binary's path.

    Example: sudo cdev qemu build
    """
    err = Console(stderr=True)
    with Progress(
        TextColumn("[bold]qemu[/bold] {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=1.0)

        def report(text: str, fraction: float | None) -> None:
            progress.update(task, description=text, completed=fraction or 0.0)

        binary = qemu_build.ensure_qemu(
            report, qemu_src=qemu_src, force=force, sanitizers=sanitizers
        )
    print(binary)


@qemu_app.command("path")
def path(
    sanitizers: bool = typer.Option(False, "--sanitizers", help="The sanitizer build."),
) -> None:
    """Print the most recently built QEMU binary (build it with `cdev qemu build`).

    Example: $(cdev qemu path) -device help | grep cryptodev
    """
    binary = qemu_build.latest_binary(sanitizers)
    if binary is None:
        raise UnavailableError("no QEMU built yet: run `cdev qemu build`")
    print(binary)


def register(app: typer.Typer) -> None:
    app.add_typer(qemu_app, name="qemu")

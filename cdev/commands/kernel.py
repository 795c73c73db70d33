"""``cdev kernel``: build the guest frontend module; load and unload it in a guest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

from cdev.commands.vm import progress_reporter
from cdev.errors import CdevError, UnavailableError
from cdev.vm import module_build

kernel_app = typer.Typer(
    help="Build the virtio-cryptodev guest module; load or unload it (in a guest).",
    no_args_is_help=True,
)


@kernel_app.command("build")
def build(
    kernel_version: str | None = typer.Option(
        None,
        "--kernel-version",
        metavar="VER",
        help="Kernel ABI to build for (default: the one linux-headers-amd64 installs).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is current."),
) -> None:
    """Build kernel/ against the matching Debian headers, outside the source tree.

    Prints the path of virtio_cryptodev.ko. Example: cdev kernel build
    """
    with progress_reporter("kernel") as report:
        ko = module_build.ensure_module(kernel_version, report, force=force)
    print(ko)


def _loaded(name: str = module_build.MODULE_NAME) -> bool:
    try:
        with open("/proc/modules") as f:
            return any(line.split(" ", 1)[0] == name for line in f)
    except OSError:
        return False


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UnavailableError(f"{what} a kernel module needs root (run it as root in the guest)")


def _tool(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise UnavailableError(f"cannot run {argv[0]}: {exc.strerror} (install kmod)") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
        raise CdevError(f"{' '.join(argv)}: {msg[-1]}")


def _nodes(action: str) -> str:
    """Create or remove /dev/cryptodevN with cdev.nodes; devtmpfs usually did it already."""
    try:
        from cdev import nodes
    except ImportError:
        return "nodes: left to devtmpfs"
    root = Path("/")
    if action == "create":
        try:
            plan = nodes.plan_create(root, nodes.wanted_nodes(root))
        except CdevError as exc:
            return f"nodes: {exc}"
        todo = [a for a in plan if a.kind != "keep"]
    else:
        plan = todo = nodes.plan_remove(root)
    nodes.apply(plan)
    names = ", ".join(str(a.path) for a in plan) or "none"
    return f"nodes: {names}" + (f" ({len(todo)} changed)" if todo else "")


@kernel_app.command("load")
def load(
    module: Path | None = typer.Option(
        None, "--module", metavar="KO", help="The .ko to load (default: the current build)."
    ),
    params: list[str] = typer.Argument(None, help="Module parameters, e.g. major=60."),
) -> None:
    """Insert virtio_cryptodev.ko (built by `cdev kernel build`), then make the nodes.

    Meant for a guest (see `cdev vm run`). Example: cdev kernel load major=60
    """
    _need_root("loading")
    if _loaded():
        print(f"{module_build.MODULE_NAME} already loaded")
    else:
        release = os.uname().release
        ko = module or module_build.built_module(release) or module_build.latest_module(release)
        if ko is None:
            raise UnavailableError(
                f"no {module_build.MODULE_FILE} built for {release}: run `cdev kernel build`"
            )
        _tool(["insmod", str(ko), *(params or [])])
        print(f"loaded {ko}")
    print(_nodes("create"))


@kernel_app.command("unload")
def unload() -> None:
    """Remove the nodes, then the module. Example: cdev kernel unload"""
    _need_root("unloading")
    if not _loaded():
        print(f"{module_build.MODULE_NAME} not loaded")
        return
    print(_nodes("remove"))
    _tool(["rmmod", module_build.MODULE_NAME])
    print(f"unloaded {module_build.MODULE_NAME}")


def register(app: typer.Typer) -> None:
    app.add_typer(kernel_app, name="kernel")

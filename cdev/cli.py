"""The ``cdev`` command line: the root app, error handling and plugin wiring.

Each built-in command lives in ``cdev/commands/<name>.py`` and exposes ``register(app)``;
plugins add theirs through the ``cdev_register_commands`` hook. Errors raised as
:class:`cdev.errors.CdevError` become one line on stderr and the documented exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

import cdev
from cdev.errors import error_exit
from cdev.plugins import (
    BLOCK_ENV,
    LOAD_ENV,
    Registry,
    get_registry,
    load_registry,
    plugin_options,
    set_registry,
)

# Built-in commands and their modules, in the order `cdev --help` lists them. A module is
# imported only when its command runs (or help lists it): start-up stays fast.
BUILTIN_COMMANDS = {
    "crypt": "cdev.commands.crypt",
    "session": "cdev.commands.session",
    "chat": "cdev.commands.chat",
    "plugins": "cdev.commands.plugins",
    "nodes": "cdev.commands.nodes",
    "kernel": "cdev.commands.kernel",
    "qemu": "cdev.commands.qemu",
    "vm": "cdev.commands.vm",
    "vq-trace": "cdev.commands.vqtrace",
}


class CdevGroup(TyperGroup):
    """Loads built-in commands on first use, and turns every error below the root into one
    line on stderr and an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        loaded = super().list_commands(ctx)
        return [*BUILTIN_COMMANDS, *(n for n in loaded if n not in BUILTIN_COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in BUILTIN_COMMANDS:
            command = _load_builtin(cmd_name)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) and (
                type(exc).__module__.startswith("typer") or type(exc).__name__.endswith("Exit")
            ):
                raise  # typer's and click's own, which they report themselves
            found = error_exit(exc)
            if found is None:
                raise
            message, code = found
            if message is not None:
                print(f"cdev: {message}", file=sys.stderr)
            raise typer.Exit(code) from None


def _load_builtin(name: str) -> Any:
    """The click command for built-in ``name``, built from its module's ``register(app)``."""
    holder = typer.Typer()
    importlib.import_module(BUILTIN_COMMANDS[name]).register(holder)
    holder.callback()(lambda: None)  # force a group, so that the command keeps its name
    group = typer.main.get_command(holder)
    return group.commands[name]  # type: ignore[attr-defined]


def _version(value: bool) -> None:
    if value:
        print(f"cdev {cdev.__version__}")
        raise typer.Exit()


def build_app(registry: Registry | None = None) -> typer.Typer:
    """The full CLI with built-in commands and every loaded plugin's commands."""
    if registry is not None:
        set_registry(registry)
    app = typer.Typer(
        name="cdev",
        cls=CdevGroup,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,  # locals may hold keys and passphrases
        context_settings={"help_option_names": ["-h", "--help"]},
        help=(
            "Chat, file encryption and session tools over pluggable crypto providers, "
            "including a paravirtualized crypto device for QEMU guests.\n\n"
            "Example: cdev crypt encrypt notes.txt -o notes.txt.cdev"
        ),
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
        load_plugins: str = typer.Option(
            None,
            "--load-plugins",
            metavar="NAMES",
            help=f"Load only these plugins (comma-separated; also {LOAD_ENV}).",
        ),
        block_plugins: str = typer.Option(
            None,
            "--block-plugins",
            metavar="NAMES",
            help=f"Do not load these plugins (comma-separated; also {BLOCK_ENV}).",
        ),
    ) -> None:
        # The plugin options are read from argv before the app is built (plugins add
        # commands); they are declared here so that --help documents them.
        del version, load_plugins, block_plugins

    get_registry().add_commands(app)
    return app


def main() -> None:
    """The CLI through typer only (``cdev`` itself starts in :func:`cdev.fastpath.main`)."""
    load, block = plugin_options(sys.argv[1:])
    app = build_app(load_registry(load, block))
    app(prog_name="cdev")

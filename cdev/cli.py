"""The ``cdev`` command line: the root app, error handling and plugin wiring.

Each built-in command lives in ``cdev/commands/<name>.py`` and exposes ``register(app)``;
plugins add theirs through the ``cdev_register_commands`` hook. Errors raised as
:class:`cdev.errors.CdevError` become one line on stderr and the documented exit code.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from cdev import __version__
from cdev.errors import EXIT_FAILURE, CdevError
from cdev.plugins import BLOCK_ENV, LOAD_ENV, Registry, get_registry, load_registry, set_registry

# Built-in command modules, in the order `cdev --help` lists them.
BUILTIN_COMMANDS = (
    "cdev.commands.chat",
    "cdev.commands.crypt",
    "cdev.commands.session",
    "cdev.commands.nodes",
    "cdev.commands.plugins",
    "cdev.commands.qemu",
    "cdev.commands.vqtrace",
    "cdev.commands.kernel",
    "cdev.commands.vm",
)

DEBUG_ENV = "CDEV_DEBUG"


def fail(message: str, code: int) -> typer.Exit:
    print(f"cdev: {message}", file=sys.stderr)
    return typer.Exit(code)


class CdevGroup(TyperGroup):
    """Turns every error below the root into one line on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CdevError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            # Reader went away (cdev ... | head): not an error worth a message.
            _silence_stdout()
            raise typer.Exit(EXIT_FAILURE) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            if type(exc).__module__.startswith("typer") or type(exc).__name__.endswith("Exit"):
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
                EXIT_FAILURE,
            ) from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _version(value: bool) -> None:
    if value:
        print(f"cdev {__version__}")
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

    for module_name in BUILTIN_COMMANDS:
        importlib.import_module(module_name).register(app)
    get_registry().add_commands(app)
    return app


def _plugin_options(argv: list[str]) -> tuple[str | None, str | None]:
    found: dict[str, str | None] = {"--load-plugins": None, "--block-plugins": None}
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for opt in found:
            if arg == opt and i + 1 < len(argv):
                found[opt] = argv[i + 1]
            elif arg.startswith(opt + "="):
                found[opt] = arg.split("=", 1)[1]
    return found["--load-plugins"], found["--block-plugins"]


def main() -> None:
    load, block = _plugin_options(sys.argv[1:])
    app = build_app(load_registry(load, block))
    app(prog_name="cdev")

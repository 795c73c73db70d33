"""Every hook a cdev plugin can implement, in one place.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` and named after
the specs below, published under the ``cdev`` entry-point group::

    [project.entry-points.cdev]
    myplugin = "my_package.cdev_plugin"

The built-in providers and transports in ``plugins/cdev_plugins`` register exactly this way.
Hooks follow llm's ``register_*(register)`` style: cdev passes a callback and the plugin calls it
once per thing it provides, so a plugin can register zero, one or many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from cdev.provider import ProviderFactory
    from cdev.transport import Transport

hookspec = pluggy.HookspecMarker("cdev")
hookimpl = pluggy.HookimplMarker("cdev")


@hookspec
def cdev_register_providers(
    register: Callable[[str, str, ProviderFactory], None],
) -> None:
    """Register crypto providers.

    Call ``register(name, description, factory)`` for each provider. ``factory(arg)`` opens
    the provider (``arg`` is the part after ``:`` in ``--provider NAME:ARG``, or ``None``) and
    returns a :class:`cdev.provider.Provider`; it raises :class:`cdev.errors.UnavailableError`
    with one line if the provider cannot work on this machine. Keep the factory cheap to
    *register*: open devices only when it is called.
    """


@hookspec
def cdev_register_transports(
    register: Callable[[str, str, Callable[[], Transport]], None],
) -> None:
    """Register chat transports.

    Call ``register(name, description, factory)``; ``factory()`` returns a
    :class:`cdev.transport.Transport`.
    """


@hookspec
def cdev_register_commands(app: typer.Typer) -> None:
    """Add commands to the ``cdev`` CLI.

    Add a sub-app with ``app.add_typer(my_app, name="mycmd")`` or a command with
    ``@app.command()``. Raise :class:`cdev.errors.CdevError` from a command for a one-line
    error and exit code.
    """


# Re-exported so that a plugin needs only ``from cdev.hookspecs import hookimpl``.
__all__ = [
    "cdev_register_commands",
    "cdev_register_providers",
    "cdev_register_transports",
    "hookimpl",
    "hookspec",
]

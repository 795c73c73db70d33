"""Plugin discovery and the registry of what plugins provide.

Plugins come from the ``cdev`` entry-point group (built-ins included, as in datasette's
``DEFAULT_PLUGINS``). Which ones load is chosen like llm's ``LLM_LOAD_PLUGINS`` and tox's
blocked plugins: ``CDEV_LOAD_PLUGINS=a,b`` loads only those (empty: none), and
``CDEV_BLOCK_PLUGINS=c`` skips those; ``cdev --load-plugins`` / ``--block-plugins`` do the same.

pluggy does not isolate plugins from each other, so a plugin that fails to import or whose hook
raises is reported on stderr with its name and error, and everything else keeps working.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from cdev import hookspecs, plugin_index
from cdev.errors import UnavailableError
from cdev.plugin_index import PluginEntry
from cdev.provider import Provider, ProviderEntry, ProviderFactory

if TYPE_CHECKING:  # cdev.transport imports asyncio, which only chat needs
    from cdev.transport import Transport, TransportEntry

ENTRY_POINT_GROUP = "cdev"
LOAD_ENV = "CDEV_LOAD_PLUGINS"
BLOCK_ENV = "CDEV_BLOCK_PLUGINS"
# The distribution that ships cdev and its built-in plugins. ``cdev`` on the package index
# is an unrelated project: the command is ``cdev``, the distribution is not.
BUILTIN_DIST = "cdev-toolkit"
# What --provider means when it is not given (every command that takes one).
PROVIDER_ENV = "CDEV_PROVIDER"
DEFAULT_PROVIDER = "software"


@dataclass
class PluginInfo:
    name: str
    version: str
    origin: str  # "built-in" or "distribution NAME"
    module: str
    providers: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "origin": self.origin,
            "module": self.module,
            "providers": self.providers,
            "transports": self.transports,
            "commands": self.commands,
            "error": self.error,
        }


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _warn(message: str) -> None:
    print(f"cdev: warning: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Registry:
    """What the loaded plugins provide. Build one with :func:`load_registry`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.providers: dict[str, ProviderEntry] = {}
        self.transports: dict[str, TransportEntry] = {}
        self.problems: list[str] = []

    # -- loading -------------------------------------------------------------------------
    def add_plugin(self, module: ModuleType | object, info: PluginInfo) -> None:
        """Register a loaded plugin object and collect what it provides."""
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:  # e.g. a hookimpl with invalid arguments
            self._fail(info, f"could not be registered: {_one_line(exc)}")
            return
        unknown = sorted(hc.name for hc in self.pm.get_hookcallers(module) or [] if not hc.spec)
        if unknown:
            # pluggy accepts these silently; a misspelled hook would otherwise never run.
            self.pm.unregister(module)
            self._fail(info, f"implements unknown hook(s) {', '.join(unknown)} (misspelled?)")
            return
        self.plugins[info.name] = info
        self._collect(info)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = message
        self.plugins[info.name] = info
        self.problems.append(f"plugin {info.name!r} {message}")
        _warn(f"plugin {info.name!r} {message}; continuing without it")

    def _call(self, hook_name: str, info: PluginInfo, **kwargs: Any) -> None:
        """Call one plugin's implementation of a hook, isolating its failures."""
        plugin = self.pm.get_plugin(info.name)
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self._fail(info, f"failed in {hook_name}: {_one_line(exc)}")

    def _collect(self, info: PluginInfo) -> None:
        def register_provider(name: str, description: str, factory: ProviderFactory) -> None:
            if name in self.providers:
                other = self.providers[name].plugin
                _warn(f"plugin {info.name!r} registers provider {name!r}, already from {other!r}")
                return
            self.providers[name] = ProviderEntry(name, description, factory, info.name)
            info.providers.append(name)

        def register_transport(
            name: str, description: str, factory: Callable[[], Transport]
        ) -> None:
            if name in self.transports:
                other = self.transports[name].plugin
                _warn(f"plugin {info.name!r} registers transport {name!r}, already from {other!r}")
                return
            from cdev.transport import TransportEntry

            self.transports[name] = TransportEntry(name, description, factory, info.name)
            info.transports.append(name)

        self._call("cdev_register_providers", info, register=register_provider)
        self._call("cdev_register_transports", info, register=register_transport)

    def add_commands(self, app: Any) -> None:
        """Let every plugin add CLI commands to ``app`` (a ``typer.Typer``)."""
        for info in list(self.plugins.values()):
            if info.error:
                continue
            before = _command_names(app)
            self._call("cdev_register_commands", info, app=app)
            info.commands.extend(sorted(_command_names(app) - before))

    def adds_commands(self) -> bool:
        """Whether a loaded plugin implements ``cdev_register_commands`` (and so might add
        or replace any command)."""
        return bool(self.pm.hook.cdev_register_commands.get_hookimpls())

    # -- use -----------------------------------------------------------------------------
    def open_provider(self, spec: str) -> Provider:
        """Open ``NAME`` or ``NAME:ARG``; one-line UnavailableError for unknown names."""
        name, _, arg = spec.partition(":")
        entry = self.providers.get(name)
        if entry is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise UnavailableError(
                f"unknown provider {name!r} (available: {known}); see 'cdev plugins'"
            )
        try:
            return entry.factory(arg or None)
        except UnavailableError:
            raise
        except OSError as exc:
            raise UnavailableError(
                f"provider {name!r} cannot start: {exc.strerror or exc}"
            ) from None

    def transport(self, name: str) -> Transport:
        entry = self.transports.get(name)
        if entry is None:
            known = ", ".join(sorted(self.transports)) or "none"
            raise UnavailableError(f"unknown transport {name!r} (available: {known})")
        return entry.factory()


def _command_names(app: Any) -> set[str]:
    names = {g.name or "" for g in app.registered_groups}
    names |= {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    }
    return names


def _origin(ep: PluginEntry) -> tuple[str, str]:
    if ep.dist is None:
        return "unknown", "?"
    origin = "built-in" if ep.dist == BUILTIN_DIST else f"distribution {ep.dist}"
    return origin, ep.version


def _describe_dist(ep: PluginEntry) -> str:
    if ep.dist is None:
        return f"{ep.value} (unknown distribution)"
    return f"{ep.dist} {ep.version} ({ep.value}, in {ep.location})"


def discover() -> tuple[dict[str, PluginEntry], dict[str, list[str]]]:
    """Entry points by plugin name, and messages for the names that two distributions claim.

    Of two that clash, the built-in wins, else the one earlier on ``sys.path`` (the one
    Python itself would import first). The same target listed twice (stale metadata of one
    package) is one plugin, not a clash.
    """
    chosen: dict[str, PluginEntry] = {}
    clashes: dict[str, list[str]] = {}
    for ep in plugin_index.entries(ENTRY_POINT_GROUP):
        first = chosen.get(ep.name)
        if first is None:
            chosen[ep.name] = ep
            continue
        keep, drop = first, ep
        if ep.dist == BUILTIN_DIST and first.dist != BUILTIN_DIST:
            keep, drop = ep, first
        chosen[ep.name] = keep
        if first.value == ep.value:
            continue  # e.g. metadata left by the old distribution name "cdev": same code
        clashes.setdefault(ep.name, []).append(
            f"plugin name {ep.name!r} is claimed by two distributions: loading "
            f"{_describe_dist(keep)}, ignoring {_describe_dist(drop)}; uninstall one of them"
        )
    return chosen, clashes


def select(
    names: Iterable[str], load: set[str] | None, block: set[str] | None
) -> tuple[list[str], list[str]]:
    """Split plugin names into (to load, skipped) under the load/block lists."""
    chosen, skipped = [], []
    for name in names:
        if (load is not None and name not in load) or (block and name in block):
            skipped.append(name)
        else:
            chosen.append(name)
    return chosen, skipped


def plugin_options(argv: list[str]) -> tuple[str | None, str | None]:
    """``--load-plugins`` and ``--block-plugins`` from a ``cdev`` command line: plugins
    must be loaded before the command line is parsed, since they add commands."""
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


@dataclass
class _Selection:
    """The plugins to load, found without importing any."""

    eps: dict[str, PluginEntry]
    clashes: dict[str, list[str]]
    chosen: list[str]
    load_set: set[str] | None


def _select_plugins(load: str | None, block: str | None) -> _Selection:
    load_set = _names(load if load is not None else os.environ.get(LOAD_ENV))
    block_set = _names(block if block is not None else os.environ.get(BLOCK_ENV))
    eps, clashes = discover()
    chosen, _ = select(sorted(eps), load_set, block_set)
    return _Selection(eps, clashes, chosen, load_set)


def _new_registry(sel: _Selection) -> Registry:
    """An empty registry, after reporting what is wrong with the selection itself."""
    registry = Registry()
    for name in sel.chosen:  # a blocked name's clash does not matter
        for message in sel.clashes.get(name, []):
            registry.problems.append(message)
            _warn(message)
    if sel.load_set:
        for missing in sorted(sel.load_set - set(sel.eps)):
            _warn(f"plugin {missing!r} named in {LOAD_ENV} / --load-plugins is not installed")
    return registry


def _load_plugins(registry: Registry, sel: _Selection, names: Iterable[str]) -> None:
    for name in names:
        ep = sel.eps[name]
        origin, version = _origin(ep)
        info = PluginInfo(name=name, version=version, origin=origin, module=ep.value)
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take cdev down with it
            registry._fail(info, f"failed to import ({ep.value}): {_one_line(exc)}")
            continue
        registry.add_plugin(module, info)


def load_registry(load: str | None = None, block: str | None = None) -> Registry:
    """Discover and load plugins. ``load``/``block`` override the environment variables."""
    sel = _select_plugins(load, block)
    registry = _new_registry(sel)
    _load_plugins(registry, sel, sel.chosen)
    return registry


def load_for_provider(
    provider: str, load: str | None = None, block: str | None = None
) -> tuple[Registry, bool]:
    """A registry that can open ``provider`` (a name, without ``:ARG``), and whether it
    holds every selected plugin.

    When every selected plugin is built-in, only the one named after the provider is
    imported, if it registers it: the others (chat transports, device providers) cost more
    start-up time than a small file takes to encrypt, and built-in plugins add no
    commands. Anything else (a third-party plugin, a provider of another name) loads all,
    as :func:`load_registry` does. Clashes are reported either way.
    """
    sel = _select_plugins(load, block)
    registry = _new_registry(sel)
    builtin_only = all(sel.eps[n].dist == BUILTIN_DIST for n in sel.chosen)
    if builtin_only and provider in sel.chosen:
        _load_plugins(registry, sel, [provider])
        if provider in registry.providers:
            return registry, False
    _load_plugins(registry, sel, (n for n in sel.chosen if n not in registry.plugins))
    return registry, True


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


def set_registry(registry: Registry | None) -> None:
    global _registry
    _registry = registry

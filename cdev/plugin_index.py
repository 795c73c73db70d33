"""The installed entry points of a group, remembered until a distribution changes.

Finding entry points means importing :mod:`importlib.metadata` (about 20 ms here: more
than encrypting a small file takes) and reading every distribution's metadata, on every
``cdev`` invocation. The answer changes only when a distribution is installed, removed or
upgraded, and that changes the ``*.dist-info`` or ``*.egg-info`` entries of a directory on
``sys.path``: the answer is kept in the user's cache directory under a stamp of those
entries (their names, and the size and modification time of their ``entry_points.txt``),
so any such change is a miss and a new scan. Distributions found by import hooks other than
the path (none that cdev knows of) are not watched.

The cache is only trusted when it and its directory belong to the user and nobody else can
write them; anything unreadable or malformed is a miss, and a cache that cannot be written
is no cache.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import stat
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "XDG_CACHE_HOME"
FORMAT = 1
KEEP = 32  # cache files kept, one per sys.path
# What importlib.metadata.EntryPoint accepts: "module[.sub]:attr[.sub] [extras]".
_VALUE = re.compile(r"^(?P<module>[\w.]+)\s*(?::\s*(?P<attr>[\w.]+)\s*)?(?:\[.*\]\s*)?$")


@dataclass(frozen=True)
class PluginEntry:
    """One entry point, with what cdev says about the distribution that declares it."""

    name: str
    value: str  # "module:attr", as in entry_points.txt
    dist: str | None  # the distribution's name (None: not known)
    version: str
    location: str  # where the distribution is installed

    def load(self) -> Any:
        """Import what the entry point names, as :meth:`EntryPoint.load` does."""
        m = _VALUE.match(self.value)
        if m is None:
            raise ValueError(f"malformed entry point {self.value!r}")
        obj: Any = importlib.import_module(m["module"])
        for attr in (m["attr"] or "").split(".") if m["attr"] else ():
            obj = getattr(obj, attr)
        return obj


def entries(group: str) -> list[PluginEntry]:
    """The entry points of ``group``, in importlib.metadata's order."""
    try:
        stamp, path = _stamp(), _cache_file(group)
    except OSError:  # e.g. the current directory was removed: no cache
        return scan(group)
    if path is not None:
        cached = _read(path, stamp)
        if cached is not None:
            return cached
    found = scan(group)
    if path is not None:
        _write(path, stamp, found)
    return found


def scan(group: str) -> list[PluginEntry]:
    """The entry points of ``group``, read by :mod:`importlib.metadata`."""
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group=group):
        dist = ep.dist
        found.append(
            PluginEntry(
                name=ep.name,
                value=ep.value,
                dist=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else "?",
                location=str(dist.locate_file("")) if dist is not None else "?",
            )
        )
    return found


def _stamp() -> list[Any]:
    """What the answer depends on: each ``sys.path`` entry's distributions."""
    # The path itself too: a CRC in the file name is no proof of which cache this is.
    stamp: list[Any] = [FORMAT, sys.version, sys.executable, os.getcwd(), sys.path]
    for entry in sys.path:
        where = entry or "."
        try:
            st = os.stat(where)
        except OSError:
            stamp.append([entry])
            continue
        if not stat.S_ISDIR(st.st_mode):  # a zip file: its time and size stand for it
            stamp.append([entry, st.st_mtime_ns, st.st_size])
            continue
        dists = []
        try:
            with os.scandir(where) as it:
                for d in it:
                    if not d.name.endswith((".dist-info", ".egg-info")):
                        continue
                    try:  # an egg-info may be a file; a dist without entry points has none
                        ep = os.stat(os.path.join(d.path, "entry_points.txt"))
                        dists.append([d.name, ep.st_mtime_ns, ep.st_size])
                    except OSError:
                        dists.append([d.name])
        except OSError:
            pass
        stamp.append([entry, sorted(dists)])
    return stamp


def _cache_file(group: str) -> Path | None:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    # "" and relative entries mean the current directory: key on where they point.
    where = [os.path.abspath(e or ".") for e in sys.path]
    key = zlib.crc32(json.dumps([group, sys.executable, where]).encode())
    return Path(base) / "cdev" / f"plugins-{key:08x}.json"


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(path: Path, stamp: list[Any]) -> list[PluginEntry] | None:
    try:
        with open(path, "rb") as f:
            if not (_trusted(os.fstat(f.fileno())) and _trusted(os.stat(path.parent))):
                return None
            data = json.loads(f.read(1 << 20))
        if data["stamp"] != stamp:
            return None
        found = [PluginEntry(**e) for e in data["entries"]]
        if not all(isinstance(v, str | None) for e in found for v in asdict(e).values()):
            return None
        return found
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune(cache_dir: Path) -> None:
    """Make room for one more file among the newest :data:`KEEP`: ``python -m cdev`` run
    from many directories makes one per directory."""
    files = []
    for f in cache_dir.glob("plugins-*.json"):
        with contextlib.suppress(OSError):
            files.append((f.stat().st_mtime_ns, f))
    for _, f in sorted(files, reverse=True)[KEEP - 1 :]:
        with contextlib.suppress(OSError):
            f.unlink()


def _ours(directory: Path) -> bool:
    """Whether ``directory``, or the nearest part of it that exists, belongs to this user:
    root running with another user's HOME (sudo keeping it) must not leave root-owned
    files in that user's home."""
    for d in (directory, *directory.parents):
        try:
            return os.stat(d).st_uid == os.geteuid()
        except FileNotFoundError:
            continue
    return False


def _write(path: Path, stamp: list[Any], found: list[PluginEntry]) -> None:
    data = json.dumps({"stamp": stamp, "entries": [asdict(e) for e in found]})
    with contextlib.suppress(OSError):
        if not _ours(path.parent):
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _prune(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plugins-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)

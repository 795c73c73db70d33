"""Device nodes for the virtio-cryptodev frontend: ``/dev/cryptodevN``.

The module registers the char driver ``virtio-cryptodev`` (its major is in
``/proc/devices``: dynamic unless loaded with ``major=``) and one class device per
virtio device, ``/sys/class/virtio-cryptodev/cryptodevN`` with its ``dev`` file
("major:minor"). devtmpfs normally creates the nodes by itself; this module plans and
makes them where it does not, and is what ``kernel/crypto_dev_nodes.sh`` does in shell.

Every path is taken relative to a root directory (``/`` normally, a scratch tree in
tests), so that planning and creating can run against fake ``proc``/``sys`` trees.
"""

from __future__ import annotations

import grp
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cdev.errors import CdevError, UnavailableError, UsageError

DRIVER_NAME = "virtio-cryptodev"
NODE_PREFIX = "cryptodev"
MAX_MINORS = 256  # VCD_MINORS in kernel/virtio_cryptodev.c
DEFAULT_MODE = 0o666

_NODE_RE = re.compile(rf"{NODE_PREFIX}(\d+)")


@dataclass(frozen=True)
class Node:
    """A node that should exist: /dev/<name> as char device major:minor."""

    name: str
    major: int
    minor: int

    def path(self, root: Path) -> Path:
        return root / "dev" / self.name


@dataclass(frozen=True)
class Existing:
    """A /dev/cryptodevN that exists now."""

    path: Path
    is_char: bool
    major: int
    minor: int
    mode: int
    uid: int
    gid: int

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "char_device": self.is_char,
            "major": self.major,
            "minor": self.minor,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
        }


@dataclass(frozen=True)
class Action:
    """One step of a plan: ``create``, ``replace`` (wrong type or numbers), ``keep``,
    ``chmod`` (right numbers, wrong mode or group) or ``remove``."""

    kind: str
    path: Path
    major: int = 0
    minor: int = 0

    def describe(self) -> str:
        if self.kind == "remove":
            return f"remove {self.path}"
        return f"{self.kind} {self.path} (c {self.major} {self.minor})"


def parse_major(proc_devices: str, name: str = DRIVER_NAME) -> int | None:
    """The major of char driver ``name`` in /proc/devices text, or None."""
    in_char = False
    for line in proc_devices.splitlines():
        line = line.strip()
        if line == "Character devices:":
            in_char = True
            continue
        if line.endswith("devices:"):
            in_char = False
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[1] == name and parts[0].isdigit():
            return int(parts[0])
    return None


def read_major(root: Path = Path("/")) -> int:
    """The driver's major from <root>/proc/devices; a clear error if the module is absent."""
    path = root / "proc" / "devices"
    try:
        text = path.read_text()
    except OSError as exc:
        raise UnavailableError(f"cannot read {path}: {exc.strerror}") from None
    major = parse_major(text)
    if major is None:
        raise UnavailableError(
            f"no '{DRIVER_NAME}' driver in {path}: load the module first (cdev kernel load, "
            "or insmod kernel/virtio_cryptodev.ko)"
        )
    return major


def present_devices(root: Path = Path("/")) -> list[tuple[str, int, int]]:
    """(name, major, minor) of every device the driver has bound, from sysfs."""
    class_dir = root / "sys" / "class" / DRIVER_NAME
    found: list[tuple[str, int, int]] = []
    if not class_dir.is_dir():
        return found
    for entry in class_dir.iterdir():
        if not _NODE_RE.fullmatch(entry.name):
            continue
        try:
            text = (entry / "dev").read_text().strip()
        except OSError:
            continue
        m = re.fullmatch(r"(\d+):(\d+)", text)
        if m:
            found.append((entry.name, int(m.group(1)), int(m.group(2))))
    return sorted(found, key=lambda d: d[2])


def wanted_nodes(root: Path, count: int | None = None, major: int | None = None) -> list[Node]:
    """The nodes that should exist: ``count`` nodes 0..count-1, else one per device present.

    The major comes from /proc/devices unless given.
    """
    if count is not None and not 0 <= count <= MAX_MINORS:
        raise UsageError(f"--count must be between 0 and {MAX_MINORS}, got {count}")
    if major is None:
        major = read_major(root)
    if count is not None:
        return [Node(f"{NODE_PREFIX}{i}", major, i) for i in range(count)]
    return [Node(name, major, minor) for name, _, minor in present_devices(root)]


def existing_nodes(root: Path = Path("/")) -> list[Existing]:
    """Every <root>/dev/cryptodevN, whatever it is."""
    dev = root / "dev"
    found: list[Existing] = []
    if not dev.is_dir():
        return found
    for entry in dev.iterdir():
        if not _NODE_RE.fullmatch(entry.name):
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        is_char = stat.S_ISCHR(st.st_mode)
        found.append(
            Existing(
                path=entry,
                is_char=is_char,
                major=os.major(st.st_rdev) if is_char else 0,
                minor=os.minor(st.st_rdev) if is_char else 0,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
            )
        )
    return sorted(found, key=lambda e: int(e.path.name[len(NODE_PREFIX) :]))


def resolve_group(group: str | None) -> int | None:
    """A group name or number to a gid."""
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no such group: {group}") from None


def plan_create(
    root: Path, nodes: list[Node], mode: int = DEFAULT_MODE, gid: int | None = None
) -> list[Action]:
    """What create would do: nodes already right are kept, wrong ones replaced."""
    actions: list[Action] = []
    for node in nodes:
        path = node.path(root)
        try:
            st = path.lstat()
        except FileNotFoundError:
            actions.append(Action("create", path, node.major, node.minor))
            continue
        right = stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(node.major, node.minor)
        if not right:
            actions.append(Action("replace", path, node.major, node.minor))
        elif stat.S_IMODE(st.st_mode) != mode or (gid is not None and st.st_gid != gid):
            actions.append(Action("chmod", path, node.major, node.minor))
        else:
            actions.append(Action("keep", path, node.major, node.minor))
    return actions


def plan_remove(root: Path, major: int | None = None) -> list[Action]:
    """Remove the char nodes /dev/cryptodevN (only those with ``major`` when given)."""
    return [
        Action("remove", e.path, e.major, e.minor)
        for e in existing_nodes(root)
        if e.is_char and (major is None or e.major == major)
    ]


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CdevError(
            f"{what} device nodes needs root: run it as root (sudo cdev nodes ...), "
            "or see what it would do with --dry-run"
        )


def apply(actions: list[Action], mode: int = DEFAULT_MODE, gid: int | None = None) -> None:
    """Carry out a plan made by plan_create or plan_remove."""
    if any(a.kind != "keep" for a in actions):
        _need_root("removing" if actions[0].kind == "remove" else "creating")
    for a in actions:
        try:
            if a.kind in ("replace", "remove"):
                a.path.unlink(missing_ok=True)
            if a.kind in ("create", "replace"):
                a.path.parent.mkdir(parents=True, exist_ok=True)
                os.mknod(a.path, stat.S_IFCHR | mode, os.makedev(a.major, a.minor))
            if a.kind in ("create", "replace", "chmod"):
                os.chmod(a.path, mode)  # mknod's mode goes through the umask
                if gid is not None:
                    os.chown(a.path, -1, gid)
        except PermissionError as exc:
            raise CdevError(f"{a.path}: {exc.strerror} (device nodes need root)") from None
        except OSError as exc:
            raise CdevError(f"{a.path}: {exc.strerror}") from None

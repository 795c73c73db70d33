"""What is open on the device right now, from either side of the virtqueue.

Host side: the QEMU device's QOM properties over QMP (``qom-get PATH stats`` and
``handles``; see ``qemu/overlay/include/hw/virtio/virtio-cryptodev-stats.h``). Guest side:
the module's counters in ``/sys/class/virtio-cryptodev/cryptodevN/stats/`` (see
``kernel/README.md``). Both are input from another party: every value is checked for
type and range before use, and sysfs reads are bounded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdev.errors import CdevError
from cdev.qmp import Qmp
from cdev.vq_trace import algorithm

DEVICE_TYPE = "virtio-cryptodev-device"
SYSFS_CLASS = Path("/sys/class/virtio-cryptodev")
GUEST_FIELDS = ("open_files", "sessions", "in_flight", "completed", "errors")
U64_MAX = (1 << 64) - 1
MAX_ENTRIES = 1 << 20  # far above the device's 1024 handles x 64 sessions


class StateError(CdevError):
    """The other side answered something that is not the documented state."""


def _u64(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise StateError(f"device state: {key!r} is not a counter: {value!r:.40}")
    return value


def _dict(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise StateError(f"device state: {what} is not an object")
    return obj


def _list(obj: Any, what: str) -> list[Any]:
    if not isinstance(obj, list) or len(obj) > MAX_ENTRIES:
        raise StateError(f"device state: {what} is not a list of sane length")
    return obj


@dataclass(frozen=True)
class SessionState:
    id: int
    algorithm: str
    age_ms: int
    requests: int
    bytes: int


@dataclass(frozen=True)
class HandleState:
    id: int
    age_ms: int
    requests: int
    bytes: int
    sessions: list[SessionState]


@dataclass(frozen=True)
class HostDevice:
    path: str  # QOM path
    requests: dict[str, int]  # by kind: open, close, session-create, ..., other
    statuses: dict[str, int]  # by status name: OK, INVAL, ...
    crypt_bytes: int
    inline: int
    worker: int
    in_flight: int
    handles: list[HandleState] = field(default_factory=list)

    @property
    def session_count(self) -> int:
        return sum(len(h.sessions) for h in self.handles)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["open_handles"] = len(self.handles)
        d["open_sessions"] = self.session_count
        return d


def _counts(obj: Any, what: str) -> dict[str, int]:
    d = _dict(obj, what)
    if len(d) > 64:
        raise StateError(f"device state: {what} has too many entries")
    return {str(k): _u64(d, k) for k in d}


def parse_host(path: str, stats: Any, handles: Any) -> HostDevice:
    st = _dict(stats, "stats")
    hs = []
    for h in _list(handles, "handles"):
        h = _dict(h, "a handle")
        sessions = []
        for s in _list(h.get("sessions"), "sessions"):
            s = _dict(s, "a session")
            sessions.append(
                SessionState(
                    id=_u64(s, "session"),
                    algorithm=algorithm(_u64(s, "cipher"), _u64(s, "mac")),
                    age_ms=_u64(s, "age-ms"),
                    requests=_u64(s, "requests"),
                    bytes=_u64(s, "bytes"),
                )
            )
        hs.append(
            HandleState(
                id=_u64(h, "handle"),
                age_ms=_u64(h, "age-ms"),
                requests=_u64(h, "requests"),
                bytes=_u64(h, "bytes"),
                sessions=sessions,
            )
        )
    return HostDevice(
        path=path,
        requests=_counts(st.get("requests"), "requests"),
        statuses=_counts(st.get("statuses"), "statuses"),
        crypt_bytes=_u64(st, "crypt-bytes"),
        inline=_u64(st, "inline"),
        worker=_u64(st, "worker"),
        in_flight=_u64(st, "in-flight"),
        handles=hs,
    )


def host_state(qmp: str | Path, timeout: float = 10.0) -> list[HostDevice]:
    """Every virtio-cryptodev device of the QEMU behind ``qmp``."""
    with Qmp(qmp, timeout) as q:
        paths = q.find_devices(DEVICE_TYPE)
        if not paths:
            raise StateError(f"{qmp}: this QEMU has no {DEVICE_TYPE}")
        out = []
        for p in paths:
            names = {str(prop.get("name")) for prop in q.qom_list(p)}
            if not {"stats", "handles"} <= names:
                raise StateError(
                    f"{p}: the device has no stats/handles properties (QEMU built before "
                    "they existed? rebuild with `cdev qemu build`)"
                )
            out.append(parse_host(p, q.qom_get(p, "stats"), q.qom_get(p, "handles")))
    return out


@dataclass(frozen=True)
class GuestDevice:
    name: str  # cryptodevN
    open_files: int
    sessions: int
    in_flight: int
    completed: int
    errors: int


def _read_counter(path: Path) -> int:
    try:
        with path.open("rb") as f:
            text = f.read(32).decode("ascii", errors="replace").strip()
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    try:
        value = int(text)
    except ValueError:
        raise StateError(f"{path}: not a number") from None
    if value < 0:
        raise StateError(f"{path}: negative ({value}): counters out of step")
    return value


def guest_state(root: Path = SYSFS_CLASS) -> list[GuestDevice]:
    """Every device the guest module drives, from sysfs."""
    if not root.is_dir():
        raise CdevError(
            f"{root}: no virtio-cryptodev devices here (the module is not loaded, or this is "
            "not a guest); on the host use --attach QMP_SOCKET|NAME",
            exit_code=2,
        )
    out = []
    for dev in sorted(root.iterdir(), key=lambda p: p.name):
        stats = dev / "stats"
        if not stats.is_dir():
            raise StateError(f"{stats}: missing (a module built before it existed?)")
        values = {f: _read_counter(stats / f) for f in GUEST_FIELDS}
        out.append(GuestDevice(name=dev.name, **values))
    return out

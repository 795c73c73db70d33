"""Read the virtio-cryptodev device's QEMU trace: requests, responses, batches.

QEMU built by ``cdev qemu build`` has the ``log`` trace backend. Started with
:func:`qemu_trace_args` (``-trace virtio_cryptodev_* -D FILE -msg timestamp=on``) it writes
one line per event, e.g.::

    1234@1700000000.123456:virtio_cryptodev_request dev 0x5581 id 7 call 2 cmd 3 \
handle 0x10001 session 0x9a3c op 0 len 4096 out 4160 in 4112
    1234@1700000000.123789:virtio_cryptodev_response dev 0x5581 id 7 call 2 cmd 3 \
handle 0x10001 session 0x9a3c status 0 ret_handle 0x0 ret_session 0x9a3c

The ``PID@SECONDS:`` prefix is present only with ``-msg timestamp=on``. Requests and
responses are paired by device and id into :class:`Exchange` records; :class:`Summary`
counts them. Lines that are not ours (other trace events, guest errors) are ignored.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENT_PREFIX = "virtio_cryptodev_"

# Names from kernel/virtio_cryptodev.h (tests/test_vq_trace.py checks they agree).
CALL_NAMES = {0: "OPEN", 1: "CLOSE", 2: "IOCTL"}
CMD_NAMES = {
    1: "SESSION_CREATE",
    2: "SESSION_DESTROY",
    3: "CRYPT",
    4: "SESSION_INFO",
    5: "HASH_COPY",
    6: "AUTHCRYPT",
}
STATUS_NAMES = {
    0: "OK",
    1: "BADMSG",
    2: "INVAL",
    3: "NOHANDLE",
    4: "NOSESSION",
    5: "NOTSUPP",
    6: "NOMEM",
    7: "LIMIT",
    8: "ENGINE",
    9: "BADTAG",
}
OP_NAMES = {0: "encrypt", 1: "decrypt"}

_LINE = re.compile(
    r"^(?:(?P<pid>\d+)@(?P<ts>\d+\.\d+):)?virtio_cryptodev_(?P<kind>\w+)\s+(?P<rest>.*)$"
)
_FIELD = re.compile(r"(\w+) (\S+)")


def qemu_trace_args(log_file: Path) -> list[str]:
    """QEMU arguments that write the device's events, timestamped, to ``log_file``."""
    return ["-trace", f"{EVENT_PREFIX}*", "-D", str(log_file), "-msg", "timestamp=on"]


@dataclass(frozen=True)
class TraceEvent:
    kind: str  # request | response | batch | reset | realize
    fields: dict[str, int | str]
    ts: float | None = None
    pid: int | None = None

    def num(self, name: str) -> int:
        value = self.fields.get(name, 0)
        return value if isinstance(value, int) else 0


def _value(text: str) -> int | str:
    try:
        return int(text, 0)
    except ValueError:
        return text


def parse_line(line: str) -> TraceEvent | None:
    """One trace line, or None when it is not one of the device's events."""
    m = _LINE.match(line.strip())
    if not m:
        return None
    fields = {k: _value(v) for k, v in _FIELD.findall(m.group("rest"))}
    ts = float(m.group("ts")) if m.group("ts") else None
    pid = int(m.group("pid")) if m.group("pid") else None
    return TraceEvent(m.group("kind"), fields, ts, pid)


def describe(call: int, cmd: int, op: int | None = None) -> str:
    """``OPEN``, ``CLOSE``, ``CRYPT/encrypt``, ``SESSION_CREATE`` ... for humans."""
    if call != 2:
        return CALL_NAMES.get(call, f"call#{call}")
    name = CMD_NAMES.get(cmd, f"cmd#{cmd}")
    if cmd == 3 and op is not None:
        name += "/" + OP_NAMES.get(op, f"op#{op}")
    return name


@dataclass
class Exchange:
    """One request and (once it came) its response."""

    dev: str
    id: int
    call: int
    cmd: int
    handle: int
    session: int
    op: int
    len: int
    out_len: int
    in_len: int
    ts_request: float | None = None
    status: int | None = None
    ret_handle: int = 0
    ret_session: int = 0
    ts_response: float | None = None

    @property
    def name(self) -> str:
        return describe(self.call, self.cmd, self.op)

    @property
    def status_name(self) -> str:
        if self.status is None:
            return "pending"
        return STATUS_NAMES.get(self.status, f"status#{self.status}")

    @property
    def latency_us(self) -> float | None:
        if self.ts_request is None or self.ts_response is None:
            return None
        return (self.ts_response - self.ts_request) * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "id": self.id,
            "request": self.name,
            "call": self.call,
            "cmd": self.cmd,
            "handle": self.handle,
            "session": self.session,
            "op": self.op,
            "len": self.len,
            "out_len": self.out_len,
            "in_len": self.in_len,
            "status": self.status,
            "status_name": self.status_name,
            "ret_handle": self.ret_handle,
            "ret_session": self.ret_session,
            "latency_us": None if self.latency_us is None else round(self.latency_us, 1),
        }


@dataclass
class Summary:
    requests: int = 0
    responses: int = 0
    batches: int = 0
    max_batch: int = 0
    resets: int = 0
    bytes_in: int = 0  # CRYPT payload bytes (len) answered OK
    by_request: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    latencies_us: list[float] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_us)
        return {
            "requests": self.requests,
            "responses": self.responses,
            "pending": self.requests - self.responses,
            "batches": self.batches,
            "max_batch": self.max_batch,
            "resets": self.resets,
            "crypt_bytes_ok": self.bytes_in,
            "by_request": dict(self.by_request),
            "by_status": dict(self.by_status),
            "latency_us_p50": round(lat[len(lat) // 2], 1) if lat else None,
            "latency_us_max": round(lat[-1], 1) if lat else None,
            "engines": self.engines,
        }


class Tracker:
    """Pairs requests with responses and keeps the running summary."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], Exchange] = {}
        self.summary = Summary()

    def feed(self, ev: TraceEvent) -> Exchange | None:
        """Account for one event; returns the exchange it completed, if any."""
        s = self.summary
        raw_dev = ev.fields.get("dev", "?")
        dev = hex(raw_dev) if isinstance(raw_dev, int) else raw_dev
        if ev.kind == "request":
            ex = Exchange(
                dev=dev,
                id=ev.num("id"),
                call=ev.num("call"),
                cmd=ev.num("cmd"),
                handle=ev.num("handle"),
                session=ev.num("session"),
                op=ev.num("op"),
                len=ev.num("len"),
                out_len=ev.num("out"),
                in_len=ev.num("in"),
                ts_request=ev.ts,
            )
            self.pending[(dev, ex.id)] = ex
            s.requests += 1
            s.by_request[ex.name] += 1
            return None
        if ev.kind == "response":
            ex_opt = self.pending.pop((dev, ev.num("id")), None)
            if ex_opt is None:  # the request's line predates the file we read
                ex_opt = Exchange(
                    dev, ev.num("id"), ev.num("call"), ev.num("cmd"), ev.num("handle"),
                    ev.num("session"), 0, 0, 0, 0,
                )  # fmt: skip
            ex = ex_opt
            ex.status = ev.num("status")
            ex.ret_handle = ev.num("ret_handle")
            ex.ret_session = ev.num("ret_session")
            ex.ts_response = ev.ts
            s.responses += 1
            s.by_status[ex.status_name] += 1
            if ex.status == 0 and ex.call == 2 and ex.cmd == 3:
                s.bytes_in += ex.len
            if ex.latency_us is not None:
                s.latencies_us.append(ex.latency_us)
            return ex
        if ev.kind == "batch":
            s.batches += 1
            s.max_batch = max(s.max_batch, ev.num("popped"))
        elif ev.kind == "reset":
            s.resets += 1
        elif ev.kind == "realize":
            s.engines.append(str(ev.fields.get("engine", "?")))
        return None


def read_lines(path: Path, follow: bool = False, poll: float = 0.2) -> Iterator[str]:
    """The file's lines; with ``follow``, keep waiting for more (like ``tail -f``)."""
    with path.open("r", errors="replace") as f:
        partial = ""
        while True:
            chunk = f.readline()
            if chunk:
                partial += chunk
                if partial.endswith("\n"):
                    yield partial
                    partial = ""
                continue
            if not follow:
                if partial:
                    yield partial
                return
            # Start over if the file was truncated or replaced (a new QEMU run).
            try:
                if os.stat(path).st_size < f.tell():
                    f.seek(0)
            except FileNotFoundError:
                pass
            time.sleep(poll)


def exchanges(lines: Iterable[str], tracker: Tracker | None = None) -> Iterator[Exchange]:
    """Completed exchanges from trace lines, in response order."""
    tracker = tracker or Tracker()
    for line in lines:
        ev = parse_line(line)
        if ev is None:
            continue
        done = tracker.feed(ev)
        if done is not None:
            yield done

"""Read the virtio-cryptodev device's QEMU trace: requests, responses, batches.

QEMU built by ``cdev qemu build`` has the ``log`` trace backend. Started with
:func:`qemu_trace_args` (``-trace virtio_cryptodev_* -D FILE -msg timestamp=on``) it writes
one line per event, e.g.::

    1234@1700000000.123456:virtio_cryptodev_request dev 0x5581 id 7 call 2 cmd 3 \
handle 0x10001 session 0x9a3c op 0 len 4096 out 4160 in 4112
    1234@1700000000.123789:virtio_cryptodev_response dev 0x5581 id 7 call 2 cmd 3 \
handle 0x10001 session 0x9a3c status 0 ret_handle 0x0 ret_session 0x9a3c

Each request is followed by a ``virtio_cryptodev_chain`` line (descriptors out and in, and
for a session's creation its cipher and mac). The ``PID@SECONDS:`` prefix is present only
with ``-msg timestamp=on``. Requests and responses are paired by device and id into
:class:`Exchange` records; :class:`Summary` counts them. Lines that are not ours (other
trace events, guest errors) are ignored.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
CIPHER_NAMES = {11: "aes-cbc"}
MAC_NAMES = {18: "hmac-sha256"}
MAX_LINE = 4096
MAX_PENDING = 100_000  # longer lines are not ours: skipped, never buffered whole

_LINE = re.compile(
    r"^(?:(?P<pid>\d+)@(?P<ts>\d+\.\d+):)?virtio_cryptodev_(?P<kind>\w+)\s+(?P<rest>.*)$"
)
_FIELD = re.compile(r"(\w+) (\S+)")
# A log is input like any other: text fields that reach a terminal must be harmless.
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.:/+-]{1,64}")


def qemu_trace_args(log_file: Path) -> list[str]:
    """QEMU arguments that write the device's events, timestamped, to ``log_file``."""
    return ["-trace", f"{EVENT_PREFIX}*", "-D", str(log_file), "-msg", "timestamp=on"]


@dataclass(frozen=True)
class TraceEvent:
    kind: str  # request | chain | response | batch | reset | realize
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
        return text if _SAFE_TEXT.fullmatch(text) else "?"


def algorithm(cipher: int, mac: int) -> str:
    """``aes-cbc``, ``hmac-sha256``, ``aes-cbc+hmac-sha256`` (``""`` when neither)."""
    names = []
    if cipher:
        names.append(CIPHER_NAMES.get(cipher, f"cipher#{cipher}"))
    if mac:
        names.append(MAC_NAMES.get(mac, f"mac#{mac}"))
    return "+".join(names)


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
    algorithm: str = ""  # of the session, when the trace showed its creation
    nout: int | None = None  # descriptors in the chain, when the trace has them
    nin: int | None = None
    ts_seen: float | None = None  # when a live reader saw the response (no timestamps)

    @property
    def name(self) -> str:
        return describe(self.call, self.cmd, self.op)

    @property
    def status_name(self) -> str:
        if self.status is None:
            return "pending"
        return STATUS_NAMES.get(self.status, f"status#{self.status}")

    @property
    def chain(self) -> str:
        """The chain's shape: descriptors out+in when known, then bytes out/in."""
        desc = f"{self.nout}+{self.nin} " if self.nout is not None else ""
        return f"{desc}{self.out_len}/{self.in_len}B"

    @property
    def payload(self) -> int:
        """Bytes of data a CRYPT carried (0 for the other calls)."""
        return self.len if self.call == 2 and self.cmd == 3 else 0

    @property
    def time(self) -> float | None:
        return self.ts_response or self.ts_request or self.ts_seen

    @property
    def latency_us(self) -> float | None:
        if self.ts_request is None or self.ts_response is None:
            return None
        return (self.ts_response - self.ts_request) * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "id": self.id,
            "time": self.time,
            "request": self.name,
            "call": self.call,
            "cmd": self.cmd,
            "handle": self.handle,
            "session": self.session,
            "op": self.op,
            "algorithm": self.algorithm,
            "len": self.len,
            "chain": self.chain,
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


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class CallStats:
    count: int = 0
    errors: int = 0
    bytes: int = 0  # CRYPT payload of the answered-OK ones
    latencies_us: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_us)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        return {
            "count": self.count,
            "errors": self.errors,
            "bytes": self.bytes,
            "latency_us_p50": None if p50 is None else round(p50, 1),
            "latency_us_p99": None if p99 is None else round(p99, 1),
        }


# Latencies kept per call for percentiles: enough for a stable p99, bounded for hours of
# tracing (a reservoir would be exact in distribution; the last N are what a live view
# wants to see anyway).
MAX_LATENCIES = 100_000


class CallTotals:
    """Running totals per call (``OPEN``, ``CRYPT/encrypt``, ...) of completed exchanges."""

    def __init__(self) -> None:
        self.calls: dict[str, CallStats] = {}
        self.first: float | None = None
        self.last: float | None = None

    def add(self, ex: Exchange) -> None:
        st = self.calls.setdefault(ex.name, CallStats())
        st.count += 1
        if ex.status != 0:
            st.errors += 1
        else:
            st.bytes += ex.payload
        lat = ex.latency_us
        if lat is not None:
            st.latencies_us.append(lat)
            if len(st.latencies_us) > MAX_LATENCIES:
                del st.latencies_us[: MAX_LATENCIES // 10]
        t = ex.time
        if t is not None:
            self.first = t if self.first is None else min(self.first, t)
            self.last = t if self.last is None else max(self.last, t)

    def as_dict(self) -> dict[str, Any]:
        total = CallStats()
        for st in self.calls.values():
            total.count += st.count
            total.errors += st.errors
            total.bytes += st.bytes
            total.latencies_us += st.latencies_us
        out = {name: st.as_dict() for name, st in sorted(self.calls.items())}
        out["total"] = total.as_dict()
        return out


class Tracker:
    """Pairs requests with responses and keeps the running summary."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], Exchange] = {}
        self.summary = Summary()
        # (dev, handle, session) -> algorithm, learned from SESSION_CREATE in the trace, or
        # ("*", handle, session) from a live reader that asked the device (sessions older
        # than the trace; the device's QOM state does not show trace's dev pointer).
        self.algorithms: dict[tuple[str, int, int], str] = {}
        self._creating: dict[tuple[str, int], str] = {}

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
            if not (ex.call == 2 and ex.cmd == 1):  # a create's comes with its chain event
                ex.algorithm = self.algorithms.get(
                    (dev, ex.handle, ex.session)
                ) or self.algorithms.get(("*", ex.handle, ex.session), "")
            if len(self.pending) >= MAX_PENDING:  # a log of requests never answered
                self.pending.pop(next(iter(self.pending)))
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
            if ex.call == 2 and ex.status == 0:
                key = (dev, ex.handle, ex.ret_session or ex.session)
                if ex.cmd == 1 and ex.algorithm:
                    self.algorithms[key] = ex.algorithm
                elif ex.cmd == 2:
                    self.algorithms.pop(key, None)
            elif ex.call == 1 and ex.status == 0:
                for k in [k for k in self.algorithms if k[0] == dev and k[1] == ex.handle]:
                    del self.algorithms[k]
            s.responses += 1
            s.by_status[ex.status_name] += 1
            if ex.status == 0 and ex.call == 2 and ex.cmd == 3:
                s.bytes_in += ex.len
            if ex.latency_us is not None and len(s.latencies_us) < MAX_LATENCIES:
                s.latencies_us.append(ex.latency_us)
            return ex
        if ev.kind == "chain":  # follows its request: descriptors, a create's algorithm
            pending = self.pending.get((dev, ev.num("id")))
            if pending is not None:
                pending.nout, pending.nin = ev.num("nout"), ev.num("nin")
                if pending.call == 2 and pending.cmd == 1:
                    pending.algorithm = algorithm(ev.num("cipher"), ev.num("mac"))
            return None
        if ev.kind == "batch":
            s.batches += 1
            s.max_batch = max(s.max_batch, ev.num("popped"))
        elif ev.kind == "reset":
            s.resets += 1
        elif ev.kind == "realize" and len(s.engines) < 64:
            s.engines.append(str(ev.fields.get("engine", "?")))
        return None


def read_lines(
    path: Path,
    follow: bool = False,
    poll: float = 0.2,
    *,
    start: int = 0,
    alive: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The file's lines from byte offset ``start``; with ``follow``, keep waiting for more
    (like ``tail -f``) for as long as ``alive()`` says (default: forever). Lines longer
    than :data:`MAX_LINE` are skipped whole, so memory stays bounded whatever the file."""
    with path.open("r", errors="replace") as f:
        f.seek(start)
        partial = ""
        skipping = False
        while True:
            chunk = f.readline(MAX_LINE)
            if chunk:
                if skipping:
                    skipping = not chunk.endswith("\n")
                    continue
                partial += chunk
                if partial.endswith("\n"):
                    yield partial
                    partial = ""
                elif len(partial) >= MAX_LINE:
                    partial, skipping = "", True
                continue
            if not follow:
                if partial:
                    yield partial
                return
            if alive is not None and not alive():
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


FILTER_KEYS = ("call", "cmd", "status", "session", "handle")


def _filter_values(key: str, text: str) -> set[str] | set[int]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--filter {key}=: no value")
    if key in ("session", "handle"):
        try:
            return {int(v, 0) for v in values}
        except ValueError:
            raise ValueError(f"--filter {key}: {text!r} is not a number (e.g. 0x1a2b)") from None
    known = {
        "call": set(CALL_NAMES.values()),
        "cmd": set(CMD_NAMES.values()) | {"CRYPT/encrypt", "CRYPT/decrypt"},
        "status": set(STATUS_NAMES.values()) | {"ERROR"},
    }[key]
    # CRYPT/encrypt: command names are upper case, operations lower case.
    upper = {
        f"{v.partition('/')[0].upper()}/{v.partition('/')[2].lower()}" if "/" in v else v.upper()
        for v in values
    }
    bad = sorted(v for v in upper if v not in known)
    if bad:
        raise ValueError(
            f"--filter {key}: unknown {', '.join(bad)} (one of {', '.join(sorted(known))})"
        )
    return upper


def make_filter(specs: Iterable[str]) -> Callable[[Exchange], bool]:
    """``KEY=V1,V2`` terms (a term matches any of its values; all terms must match).

    Keys: ``call`` (OPEN, CLOSE, IOCTL), ``cmd`` (SESSION_CREATE, SESSION_DESTROY, CRYPT,
    CRYPT/encrypt, CRYPT/decrypt, SESSION_INFO), ``status`` (OK, INVAL, ... or ERROR for
    any but OK), ``session`` and ``handle`` (numbers, 0x... allowed). Raises ValueError."""
    terms: list[tuple[str, set[str] | set[int]]] = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().lower()
        if not sep or key not in FILTER_KEYS:
            raise ValueError(
                f"--filter {spec!r}: use KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}"
            )
        terms.append((key, _filter_values(key, text)))

    def match(ex: Exchange) -> bool:
        for key, values in terms:
            if key == "call":
                ok = CALL_NAMES.get(ex.call, "") in values
            elif key == "cmd":
                ok = ex.call == 2 and (CMD_NAMES.get(ex.cmd, "") in values or ex.name in values)
            elif key == "status":
                ok = ex.status_name in values or ("ERROR" in values and ex.status not in (0, None))
            elif key == "session":
                ok = (ex.ret_session or ex.session) in values
            else:
                ok = (ex.ret_handle or ex.handle) in values
            if not ok:
                return False
        return True

    return match

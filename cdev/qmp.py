"""QEMU's QMP, the one place cdev talks to it (``cdev vm``, ``vq-trace``, ``session list``).

A small synchronous facade over QEMU's own client library, ``qemu.qmp`` (asyncio). One
:class:`Qmp` is one connection; each call runs the library's coroutine to completion on
a private event loop, bounded by a timeout, so a QEMU that stops answering costs an
error, never a hang. QEMU's ``-qmp unix:PATH,server=on`` serves one client at a time:
callers hold a connection only as long as they need it.

    with Qmp("/tmp/cdev-vm-x/qmp.sock") as q:
        q.execute("query-status")
        q.trace_states("virtio_cryptodev_*")  # {"virtio_cryptodev_request": False, ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
import struct
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from cdev.errors import CdevError, UsageError

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 5

# The library logs disconnects and protocol noise at WARNING; our errors say it once.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QmpError(CdevError):
    """QMP failed: cannot connect, QEMU went away, or a command was refused."""


def check_socket(path: str | Path) -> Path:
    """``path`` must be an existing Unix socket (exit 2 otherwise)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{p}: no such QMP socket") from None
    except OSError as exc:
        raise UsageError(f"{p}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{p}: not a socket (give a QMP socket or a VM name)")
    return p


def peer_pid(path: str | Path, timeout: float = 2.0) -> int | None:
    """The pid of the process listening on Unix socket ``path`` (SO_PEERCRED), or None
    when nothing listens there any more. QEMU answers even while another QMP client is
    connected: the kernel completes the connection from the listen backlog."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            return None
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid or None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read(4096)
    except OSError:
        return False
    # "PID (comm) STATE ...": comm may hold spaces and parentheses, so split at the last ")".
    state = stat_line.rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"])


class Qmp:
    """One QMP connection; a context manager. Errors are :class:`QmpError` (exit 1)."""

    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = check_socket(path)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        # A QEMU that dies mid-call leaves the library's reader task with an EOFError that
        # asyncio would print at exit; the caller already got a QmpError for it.
        self._loop.set_exception_handler(lambda loop, context: None)
        self._client = QMPClient("cdev")
        self._connected = False

    def _run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except TimeoutError:
            raise QmpError(
                f"QMP {self.path}: no answer to {what} within {self.timeout:.0f} s "
                "(is another client attached? QEMU serves one at a time)"
            ) from None
        except ExecuteError as exc:
            raise QmpError(f"QMP {what}: {exc.error.error.desc}") from None
        except ConnectError as exc:
            raise QmpError(f"cannot connect to QMP at {self.path}: {exc.exc}") from None
        except (QMPError, OSError, EOFError) as exc:
            raise QmpError(f"QMP {self.path}: {what} failed: {exc or type(exc).__name__}") from None

    def connect(self) -> Qmp:
        # QEMU serves one client at a time. Under hot-plug churn, a client connecting
        # right after another one closed has been seen to get something else where the
        # greeting or the qmp_capabilities reply belongs (GreetingError,
        # NegotiationError), as if a message meant for the previous session came first.
        # Confusion at connect is worth a few more tries; a missing or refusing socket
        # is not.
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                self._loop.run_until_complete(
                    asyncio.wait_for(self._client.connect(str(self.path)), self.timeout)
                )
                break
            except ConnectError as exc:
                if attempt + 1 == CONNECT_ATTEMPTS or not isinstance(
                    exc.exc, GreetingError | NegotiationError | EOFError | ConnectionResetError
                ):
                    raise QmpError(f"cannot connect to QMP at {self.path}: {exc.exc}") from None
                self._client = QMPClient("cdev")
                time.sleep(0.05 * (attempt + 1))
            except TimeoutError:
                raise QmpError(
                    f"QMP {self.path}: no answer to connect within {self.timeout:.0f} s "
                    "(is another client attached? QEMU serves one at a time)"
                ) from None
            except (QMPError, OSError) as exc:
                raise QmpError(f"cannot connect to QMP at {self.path}: {exc}") from None
        self._connected = True
        return self

    def close(self) -> None:
        if self._connected:
            self._connected = False
            # QEMU already gone: nothing to say goodbye to.
            with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
                self._loop.run_until_complete(
                    asyncio.wait_for(self._client.disconnect(), self.timeout)
                )
        self._loop.close()

    def __enter__(self) -> Qmp:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return self._run(self._client.execute(cmd, args), cmd)

    def hmp(self, command_line: str) -> str:
        """A human monitor command (for what QMP lacks, e.g. ``logfile``)."""
        out = self.execute("human-monitor-command", {"command-line": command_line})
        return str(out)

    # -- trace events ----------------------------------------------------------------------
    def trace_states(self, pattern: str) -> dict[str, bool]:
        """Each event matching ``pattern`` -> whether it is enabled now."""
        rows = self.execute("trace-event-get-state", {"name": pattern})
        return {str(r["name"]): r["state"] == "enabled" for r in rows}

    def set_trace(self, name: str, enable: bool) -> None:
        self.execute("trace-event-set-state", {"name": name, "enable": enable})

    # -- QOM ---------------------------------------------------------------------------------
    def qom_list(self, path: str) -> list[dict[str, str]]:
        return list(self.execute("qom-list", {"path": path}))

    def qom_get(self, path: str, prop: str) -> Any:
        return self.execute("qom-get", {"path": path, "property": prop})

    def find_devices(self, type_name: str) -> list[str]:
        """QOM paths of the devices whose type is ``type_name`` (e.g. children of a PCI
        proxy are found by their own type), in a stable order."""
        out: list[str] = []
        seen: set[str] = set()

        def walk(path: str, depth: int) -> None:
            if depth > 6 or path in seen:
                return
            seen.add(path)
            for prop in self.qom_list(path):
                ptype = str(prop.get("type", ""))
                if not ptype.startswith("child<"):
                    continue
                child = f"{path.rstrip('/')}/{prop['name']}"
                if ptype == f"child<{type_name}>":
                    out.append(child)
                walk(child, depth + 1)

        for root in ("/machine/peripheral", "/machine/peripheral-anon"):
            walk(root, 0)
        return sorted(out)

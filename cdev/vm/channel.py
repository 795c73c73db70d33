"""The host end of the guest agent's channel (see :mod:`cdev.vm.agent` for the protocol).

:class:`AgentChannel` owns the connected Unix socket QEMU wires to the agent's
virtio-serial port: a reader thread dispatches replies to waiting callers by id, so
many commands run at once over one connection.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import signal
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cdev.errors import CdevError

Command = str | Sequence[str]

GUEST_SLACK = 30.0  # extra seconds the host waits for the agent beyond a command's timeout
FRAME = struct.Struct(">I")
MAX_FRAME = 256 << 20


class RunResult(NamedTuple):
    """A finished guest command: ``status, stdout, stderr = guest.run(...)``."""

    status: int
    stdout: str
    stderr: str


class RawResult(NamedTuple):
    status: int
    stdout: bytes
    stderr: bytes


class GuestError(CdevError):
    """The guest failed to boot, hung, or stopped answering."""


class GuestTimeout(GuestError):
    """A guest command ran past its timeout (it was killed); partial output is attached."""

    def __init__(self, message: str, result: RawResult) -> None:
        super().__init__(message)
        self.result = result


def argv_of(cmd: Command) -> list[str]:
    """A str runs through ``/bin/sh -c``; a sequence is the argv itself."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    argv = [str(a) for a in cmd]
    if not argv:
        raise CdevError("empty guest command")
    return argv


def text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None
    guest_pid: int | None = None


class GuestProcess:
    """A command running in the background in the guest (see :meth:`AgentChannel.spawn`)."""

    def __init__(self, channel: AgentChannel, rid: int, pending: _Pending, argv: list[str]):
        self._channel = channel
        self._rid = rid
        self._pending = pending
        self.argv = argv

    @property
    def pid(self) -> int | None:
        """The guest-side pid, once started."""
        self._pending.started.wait(timeout=GUEST_SLACK)
        return self._pending.guest_pid

    def poll(self) -> int | None:
        reply = self._pending.reply
        return int(reply["status"]) if reply and reply.get("type") == "exit" else None

    def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._channel.control("stdin", self._rid, data=base64.b64encode(raw).decode())

    def close_stdin(self) -> None:
        self._channel.control("close_stdin", self._rid)

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Signal the process group in the guest."""
        if self.poll() is None:
            self._channel.control("signal", self._rid, signal=int(sig))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait_raw(self, timeout: float | None = None) -> RawResult:
        return self._channel.await_exit(self._rid, self._pending, timeout, self.argv)

    def wait(self, timeout: float | None = None) -> RunResult:
        raw = self.wait_raw(timeout)
        return RunResult(raw.status, text(raw.stdout), text(raw.stderr))


class AgentChannel:
    """Frames to and from the agent over ``sock``.

    ``why_dead`` turns the reason the channel closed into a message for the user (the
    guest adds its console and QEMU log tails); ``hung_hint`` is appended when the agent
    stops answering.
    """

    def __init__(
        self,
        sock: socket.socket,
        why_dead: Callable[[str], str] = lambda s: s,
        hung_hint: str = "",
    ) -> None:
        self._sock: socket.socket | None = sock
        self._why_dead = why_dead
        self._hung_hint = hung_hint
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 1
        self.dead: str | None = None
        self.hello = threading.Event()
        self.hello_msg: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read_loop, name="cdev-guest", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self.dead = self.dead or "guest closed"
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._reader.join(timeout=5)
        self._fail_pending()

    def dead_reason(self) -> str:
        return self._why_dead(self.dead or "guest not started")

    # -- reading -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while True:
                (n,) = FRAME.unpack(_recv_exact(sock, FRAME.size))
                if n > MAX_FRAME:
                    raise GuestError(f"agent frame too large ({n} bytes)")
                self._dispatch(json.loads(_recv_exact(sock, n)))
        except (OSError, EOFError, ValueError, GuestError) as exc:
            self.dead = self.dead or f"agent channel closed ({exc or type(exc).__name__})"
        self._fail_pending()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "hello":
            self.hello_msg = msg
            self.hello.set()
            return
        with self._lock:
            pending = self._pending.get(int(msg.get("id", -1)))
        if pending is None:
            return
        if kind == "started":
            pending.guest_pid = int(msg["pid"])
            pending.started.set()
            return
        pending.reply = msg
        pending.started.set()
        pending.event.set()

    def _fail_pending(self) -> None:
        with self._lock:
            for p in self._pending.values():
                p.started.set()
                p.event.set()

    # -- requests ------------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        sock = self._sock
        if self.dead or sock is None:
            raise GuestError(self.dead_reason())
        data = json.dumps(msg).encode()
        with self._send_lock:
            try:
                sock.sendall(FRAME.pack(len(data)) + data)
            except OSError as exc:
                raise GuestError(f"cannot reach the guest agent: {exc}") from None

    def _new(self) -> tuple[int, _Pending]:
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            pending = _Pending()
            self._pending[rid] = pending
        return rid, pending

    def control(self, op: str, target: int, **kw: Any) -> None:
        """A small request answered by ``ok`` or ``error`` (stdin, signal, ping, sync)."""
        rid, pending = self._new()
        try:
            self._send({"op": op, "id": rid, "target": target, **kw})
            if not pending.event.wait(GUEST_SLACK) or pending.reply is None:
                raise GuestError(f"guest agent did not answer {op}: {self.dead_reason()}")
            if pending.reply.get("type") == "error":
                raise GuestError(f"guest {op} failed: {pending.reply.get('error')}")
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    def spawn(self, run_msg: dict[str, Any]) -> GuestProcess:
        """Send a ``run`` request (everything but its id) and return at once."""
        rid, pending = self._new()
        try:
            self._send({**run_msg, "op": "run", "id": rid})
        except BaseException:
            with self._lock:
                self._pending.pop(rid, None)
            raise
        return GuestProcess(self, rid, pending, list(run_msg["argv"]))

    def await_exit(
        self, rid: int, pending: _Pending, timeout: float | None, argv: list[str]
    ) -> RawResult:
        wait = None if timeout is None else timeout + GUEST_SLACK
        ok = pending.event.wait(wait)
        reply = pending.reply
        if not ok or reply is None or reply.get("type") != "exit":
            if ok or self.dead:
                raise GuestError(f"{shlex.join(argv)}: {self.dead_reason()}")
            raise GuestError(
                f"{shlex.join(argv)}: guest agent gave no answer {wait:.0f} s "
                f"after the command's timeout; the guest looks hung{self._hung_hint}"
            )
        with self._lock:
            self._pending.pop(rid, None)
        raw = RawResult(
            int(reply["status"]),
            base64.b64decode(reply.get("stdout") or ""),
            base64.b64decode(reply.get("stderr") or ""),
        )
        if reply.get("timed_out"):
            raise GuestTimeout(f"{shlex.join(argv)}: timed out in the guest after {timeout} s", raw)
        return raw


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("agent closed the channel")
        buf += chunk
    return bytes(buf)

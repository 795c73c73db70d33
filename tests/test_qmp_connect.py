"""cdev.qmp.Qmp against a QMP server of our own on a real Unix socket: a negotiation that
fails the way a busy QEMU's can (the previous client's session not yet reset) is retried;
one that keeps failing is one clear error."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from cdev.qmp import CONNECT_ATTEMPTS, Qmp, QmpError

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}  # fmt: skip
ALREADY = "Capabilities negotiation is already complete, command ignored"
REFUSED = {"error": {"class": "CommandNotFound", "desc": ALREADY}}
EVENT = {"event": "DEVICE_DELETED", "data": {"device": "cryptodev0"},
         "timestamp": {"seconds": 1, "microseconds": 2}}  # fmt: skip


class FakeQmp:
    """Serves clients one at a time; the first ``refuse`` connections go wrong in turn
    (qmp_capabilities refused, a hang-up after it, an event instead of the greeting),
    later ones succeed."""

    def __init__(self, path: Path, refuse: int) -> None:
        self.refuse = refuse
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buf = b""

        def request() -> dict[str, object] | None:
            # QMP messages are JSON objects, not necessarily newline-terminated.
            nonlocal buf
            while True:
                text = buf.decode().lstrip()
                if text:
                    try:
                        obj, end = json.JSONDecoder().raw_decode(text)
                    except json.JSONDecodeError:
                        pass
                    else:
                        buf = text[end:].encode()
                        return dict(obj)
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                buf += chunk

        def send(obj: object) -> None:
            conn.sendall(json.dumps(obj).encode() + b"\r\n")

        if self.connections <= self.refuse and self.connections % 3 == 0:
            send(EVENT)  # where the greeting belongs
            return
        send(GREETING)
        if request() is None:
            return
        if self.connections <= self.refuse:
            if self.connections % 3 == 1:
                send(REFUSED)
            return  # hang up
        send({"return": {}})
        while (req := request()) is not None:
            send({"return": {"status": "running"}, "id": req.get("id")})

    def close(self) -> None:
        self.sock.close()


def test_refused_negotiation_is_retried(tmp_path: Path) -> None:
    server = FakeQmp(tmp_path / "qmp.sock", refuse=3)
    try:
        with Qmp(tmp_path / "qmp.sock", timeout=5) as q:
            assert q.execute("query-status") == {"status": "running"}
        assert server.connections == 4
    finally:
        server.close()


def test_negotiation_that_keeps_failing_is_one_error(tmp_path: Path) -> None:
    server = FakeQmp(tmp_path / "qmp.sock", refuse=1000)
    try:
        with pytest.raises(QmpError, match=r"cannot connect to QMP at .*qmp\.sock"):
            Qmp(tmp_path / "qmp.sock", timeout=5).connect()
        assert server.connections == CONNECT_ATTEMPTS
    finally:
        server.close()


def test_missing_socket_is_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on: connection refused
    with pytest.raises(QmpError, match="cannot connect to QMP"):
        Qmp(path, timeout=5).connect()

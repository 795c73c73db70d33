"""The terminal view (a real pty) and what a room peer does when the broker goes away."""

from __future__ import annotations

import os
import pty
import select
import signal
import time

from tests.chat_helpers import (
    CDEV,
    HANG_GUARD,
    env,
    free_port,
    one_error_line,
    spawn,
    wait_for_line,
    wait_listening,
)


def _read_pty(fd: int, until: bytes, seen: bytes = b"") -> bytes:
    deadline = time.monotonic() + HANG_GUARD
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_terminal_view_shows_names_and_neutralises_escapes() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "--nick", "alice")
    wait_listening(address)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a connector on a terminal
        os.execve(CDEV, [CDEV, "chat", "connect", address, "--nick", "bob"], env())
    try:
        seen = _read_pty(fd, b"connected to alice")
        listener.stdin.write(b"hi \x1b]0;pwned\x07 there\n")  # type: ignore[union-attr]
        listener.stdin.flush()  # type: ignore[union-attr]
        seen = _read_pty(fd, b"there", seen)
        assert b"alice" in seen and b"hi " in seen
        assert b"\x1b]0;pwned" not in seen  # the peer cannot set our terminal title
        os.write(fd, b"typed by bob\n")
        wait_for_line(listener, "stdout", b"typed by bob")
        os.write(fd, b"\x04")  # Ctrl-D: goodbye and leave
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
        listener.kill()
        listener.wait()


def test_room_peer_reports_a_vanished_broker() -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = spawn("broker", address)
    wait_listening(address)
    peer = spawn("join", address, "--nick", "alice")
    wait_for_line(peer, "stderr", b"joined as alice")
    broker.send_signal(signal.SIGKILL)
    broker.wait(HANG_GUARD)
    # stdin stays open: the peer must notice on its own, not because its input ended.
    err = wait_for_line(peer, "stderr", b"broker closed the connection")
    assert peer.wait(HANG_GUARD) == 1
    assert "broker closed the connection" in one_error_line(err)


def test_stopped_broker_says_why() -> None:
    address = f"127.0.0.1:{free_port()}"
    broker = spawn("broker", address)
    wait_listening(address)
    peer = spawn("join", address, "--nick", "alice")
    wait_for_line(peer, "stderr", b"joined as alice")
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(HANG_GUARD) == 0
    err = wait_for_line(peer, "stderr", b"shutting down")
    assert peer.wait(HANG_GUARD) == 1
    assert "broker is shutting down" in one_error_line(err)

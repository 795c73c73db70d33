"""Helpers for the chat tests: real cdev processes, free ports, in-process brokers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cdev.chat.broker import Broker, BrokerConfig, run_broker
from cdev.chat.options import ChatOptions
from cdev.plugins import get_registry
from cdev.transport import Transport

CDEV = str(Path(sys.executable).with_name("cdev"))
HANG_GUARD = 30.0  # generous: only there so a bug fails instead of hanging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env(passphrase: str | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    if passphrase is not None:
        e["CDEV_PASSPHRASE"] = passphrase
    return e


def spawn(*args: str, passphrase: str | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CDEV, "chat", *args],
        env=env(passphrase),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_listening(address: str, transport: str = "tcp", timeout: float = 15) -> None:
    """Poll until a socket accepts (the probe connection is dropped by the server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if transport == "unix":
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(address)
            else:
                host, port = address.rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {address}")


def wait_for_line(proc: subprocess.Popen[bytes], stream: str, needle: bytes) -> bytes:
    """Read a process's stream until a line contains ``needle`` (hang guarded)."""
    f = getattr(proc, stream)
    seen = b""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        line = f.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen on {stream}: {seen!r}")


def one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    assert lines and lines[-1].startswith("cdev: "), text
    return lines[-1]


def tcp() -> Transport:
    return get_registry().transport("tcp")


def options(nick: str, passphrase: str | None = None, **kw: Any) -> ChatOptions:
    opts = ChatOptions(nick=nick, **kw)
    if passphrase is not None:
        opts.encrypt = True
        opts.passphrase = passphrase.encode()
        opts.provider = get_registry().open_provider("software")
    return opts


@contextlib.asynccontextmanager
async def broker(
    config: BrokerConfig | None = None, transport: Transport | None = None, address: str = ""
) -> AsyncIterator[tuple[Broker, str]]:
    """An in-process broker on a free port; yields it and its address."""
    config = config or BrokerConfig(quiet=True)
    transport = transport or tcp()
    address = address or f"127.0.0.1:{free_port()}"
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_broker(transport, address, config, started))
    b = await asyncio.wait_for(started, HANG_GUARD)
    try:
        yield b, address
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def run(coro_fn: Callable[[], Any], guard: float = HANG_GUARD * 2) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), guard))

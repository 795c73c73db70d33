"""The ``unix`` transport: Unix-domain stream sockets named by a filesystem path."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable

from cdev.errors import CdevError, UsageError
from cdev.hookspecs import hookimpl
from cdev.transport import ConnectionHandler, Transport

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_PATH = 107


def _check(address: str) -> str:
    if not address:
        raise UsageError("malformed address '': expected a socket PATH")
    if "\0" in address:
        raise UsageError("malformed address: a socket path cannot contain NUL")
    if len(os.fsencode(address)) > MAX_PATH:
        raise UsageError(f"socket path is longer than {MAX_PATH} bytes: {address}")
    return address


def _socket_state(path: str) -> str:
    """ "absent", "stale" (a socket nobody listens on), "live", or "other" (not a socket)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return "other"
    except OSError:
        return "absent"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return "stale"
    except OSError:
        return "live"
    finally:
        probe.close()
    return "live"


class UnixTransport(Transport):
    name = "unix"
    description = "Unix-domain sockets (PATH)"
    address_help = "PATH"

    async def serve(self, address: str, handler: ConnectionHandler) -> asyncio.AbstractServer:
        path = _check(address)
        state = _socket_state(path)
        # asyncio would silently unlink a live socket and steal its name: refuse instead.
        if state == "live":
            raise CdevError(f"cannot listen on {path}: address already in use")
        if state == "other":
            raise CdevError(f"cannot listen on {path}: a file that is not a socket is in the way")
        if state == "stale":
            with contextlib.suppress(OSError):
                os.unlink(path)
        try:
            return await asyncio.start_unix_server(handler, path, backlog=4096)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CdevError(f"cannot listen on {path}: address already in use") from None
            raise CdevError(f"cannot listen on {path}: {exc.strerror or exc}") from None

    async def connect(
        self, address: str, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = _check(address)
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except TimeoutError:
            raise CdevError(f"cannot connect to {path}: timed out after {timeout:g} s") from None
        except OSError as exc:
            raise CdevError(f"cannot connect to {path}: {exc.strerror or exc}") from None


@hookimpl
def cdev_register_transports(register: Callable[..., None]) -> None:
    register(UnixTransport.name, UnixTransport.description, UnixTransport)

"""The ``tcp`` transport: ``host:port`` over IPv4 or IPv6 (``[::1]:7000`` for literals)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable

from cdev.errors import CdevError, UsageError
from cdev.hookspecs import hookimpl
from cdev.transport import ConnectionHandler, Transport


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``:port`` into (host, port); one-line errors."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(f"malformed address {address!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise UsageError(f"malformed address {address!r}: expected HOST:PORT")
        if ":" in host:
            raise UsageError(f"malformed address {address!r}: write IPv6 hosts as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"malformed address {address!r}: port must be a number 0-65535")
    return host, int(port_text)


def _os_reason(exc: OSError) -> str:
    # asyncio wraps connect failures in an OSError whose text is not the reason.
    return os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)


class TcpTransport(Transport):
    name = "tcp"
    description = "TCP over IPv4 and IPv6 (HOST:PORT, [IPv6]:PORT)"
    address_help = "HOST:PORT"

    async def serve(self, address: str, handler: ConnectionHandler) -> asyncio.AbstractServer:
        host, port = parse_address(address)
        try:
            # An empty host listens on every interface, as with ncat.
            return await asyncio.start_server(
                handler, host or None, port, reuse_address=True, backlog=4096
            )
        except socket.gaierror as exc:
            raise CdevError(f"cannot listen on {address}: unknown host ({exc.strerror})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CdevError(f"cannot listen on {address}: address already in use") from None
            raise CdevError(f"cannot listen on {address}: {_os_reason(exc)}") from None

    async def connect(
        self, address: str, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = parse_address(address)
        if not host or port == 0:
            raise UsageError(f"malformed address {address!r}: connect needs HOST and a port > 0")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except socket.gaierror as exc:
            raise CdevError(f"cannot connect to {address}: unknown host ({exc.strerror})") from None
        except TimeoutError:
            raise CdevError(f"cannot connect to {address}: timed out after {timeout:g} s") from None
        except OSError as exc:
            raise CdevError(f"cannot connect to {address}: {_os_reason(exc)}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Chat records are small and latency matters more than packet count.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer


@hookimpl
def cdev_register_transports(register: Callable[..., None]) -> None:
    register(TcpTransport.name, TcpTransport.description, TcpTransport)

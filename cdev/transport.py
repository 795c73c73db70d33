"""The transport interface: how chat peers reach each other.

A transport turns an address string into asyncio streams, listening or connecting. The chat
core only ever sees ``(StreamReader, StreamWriter)`` pairs, so it cannot tell TCP from a Unix
socket or from anything a plugin adds. Transports are registered through
:func:`cdev.hookspecs.cdev_register_transports`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Transport(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    # How an address looks, for help texts and errors: "host:port", "PATH".
    address_help: ClassVar[str]

    @abstractmethod
    async def serve(self, address: str, handler: ConnectionHandler) -> asyncio.AbstractServer:
        """Listen on ``address`` and call ``handler`` for every accepted connection.

        Raises :class:`cdev.errors.CdevError` with one line when the address is malformed,
        in use, or not allowed.
        """

    @abstractmethod
    async def connect(
        self, address: str, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``address``; one-line :class:`cdev.errors.CdevError` on failure."""


@dataclass(frozen=True)
class TransportEntry:
    name: str
    description: str
    factory: Callable[[], Transport]
    plugin: str


def peer_source(writer: asyncio.StreamWriter) -> str:
    """Who is at the other end, for per-source limits: the IP address (not the port) of a
    network peer, the user id of a local (Unix socket) peer, else the peer's name."""
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return f"ip {name[0]}"
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            return f"uid {uid}"
        except OSError:
            return "local"
    return str(name or "unknown")


def peer_label(writer: asyncio.StreamWriter) -> str:
    """A connection's name for logs: ``host:port`` or ``unix peer``."""
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "unix peer"

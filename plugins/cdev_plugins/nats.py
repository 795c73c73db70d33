"""The ``nats`` transport: rooms on a NATS cluster, ``nats://HOST:PORT[,HOST:PORT...]/ROOM``.

Each member connects to any server of the list (NATS reconnects to another one when its server
goes away) and runs the ordinary member protocol against a :class:`cdev.chat.bus.BusRoom`, which
plays the broker's part over the bus. Needs the optional dependency ``nats-py``
(``pip install 'cdev[nats]'``); ``cdev chat broker`` needs nothing extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

from cdev.chat.bus import MAX_MESSAGE, BusConfig, BusRoom, check_room
from cdev.errors import CdevError, UnavailableError, UsageError
from cdev.hookspecs import hookimpl
from cdev.transport import ConnectionHandler, Transport

DEFAULT_PORT = 4222
MAX_SERVERS = 32
HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
# Bounds what one subscription may hold before NATS drops (as a slow consumer): losses then
# show up as gaps, memory never grows without bound.
PENDING_MSGS = 1 << 16
PENDING_BYTES = 64 << 20


def parse_url(address: str) -> tuple[list[str], str]:
    """``nats://h1:4222,h2/ROOM`` -> (["nats://h1:4222", "nats://h2:4222"], "ROOM")."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme != "nats":
        raise UsageError(f"malformed address {address[:200]!r}: expected nats://HOST:PORT/ROOM")
    hosts, slash, room = rest.partition("/")
    if not slash or not room:
        raise UsageError(f"malformed address {address[:200]!r}: no /ROOM after the servers")
    check_room(room)
    servers = []
    parts = hosts.split(",")
    if len(parts) > MAX_SERVERS:
        raise UsageError(f"malformed address: more than {MAX_SERVERS} servers")
    for part in parts:
        if part.startswith("["):
            host, _, tail = part.partition("]")
            host += "]"
            port_text = tail[1:] if tail.startswith(":") else ("" if not tail else "x")
        else:
            host, colon, port_text = part.partition(":")
            if colon and not port_text:
                port_text = "x"
        if not HOST_RE.fullmatch(host):
            raise UsageError(f"malformed address: bad server {part[:80]!r} (HOST[:PORT])")
        if port_text and (not port_text.isdigit() or not 0 < int(port_text) <= 65535):
            raise UsageError(f"malformed address: bad port in {part[:80]!r} (1-65535)")
        servers.append(f"nats://{host}:{int(port_text) if port_text else DEFAULT_PORT}")
    return servers, room


class _NatsBus:
    """The :class:`cdev.chat.bus.Bus` interface over one nats-py connection."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.subs: list[Any] = []

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        try:
            await self.nc.publish(subject, payload, reply=reply)
        except Exception as exc:  # nats-py raises its own error types
            raise CdevError(f"bus: cannot publish: {type(exc).__name__}") from None

    async def subscribe(self, subject: str, handler: Callable[[str, str, bytes], None]) -> None:
        async def cb(msg: Any) -> None:
            handler(msg.subject, msg.reply, msg.data)

        sub = await self.nc.subscribe(
            subject, cb=cb, pending_msgs_limit=PENDING_MSGS, pending_bytes_limit=PENDING_BYTES
        )
        self.subs.append(sub)

    async def close(self) -> None:
        # flush + close rather than drain: a member's last records must go out, but nothing
        # more will be read.
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), 5)


async def _any_answers(servers: list[str], timeout: float) -> bool:
    async def probe(url: str) -> bool:
        host, _, port = url.removeprefix("nats://").rpartition(":")
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), timeout
            )
        except (OSError, TimeoutError):
            return False
        w.close()
        return True

    return any(await asyncio.gather(*(probe(u) for u in servers)))


class NatsTransport(Transport):
    name = "nats"
    description = "rooms on a NATS cluster (nats://HOST:PORT[,HOST:PORT...]/ROOM; needs nats-py)"
    address_help = "nats://HOST:PORT[,HOST:PORT...]/ROOM"

    def __init__(
        self,
        mode: str | None = None,
        config: BusConfig | None = None,
        randomize: bool = True,
        reconnect_wait: float = 0.5,
    ) -> None:
        # The mode a new room gets (an existing room keeps its own); cdev chat join sets it.
        self.mode = mode
        self.config = config
        self.randomize = randomize
        self.reconnect_wait = reconnect_wait
        self.rooms: list[BusRoom] = []

    def set_member_mode(self, mode: str) -> None:
        self.mode = mode

    async def serve(self, address: str, handler: ConnectionHandler) -> asyncio.AbstractServer:
        raise UsageError(
            "the nats transport has nothing to listen on: the cluster relays the room; "
            "use 'cdev chat join nats://HOST:PORT/ROOM'"
        )

    async def connect(
        self, address: str, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        servers, room_name = parse_url(address)
        try:
            import nats
        except ImportError:
            raise UnavailableError(
                "the nats transport needs nats-py: pip install 'cdev[nats]'"
            ) from None
        if not await _any_answers(servers, timeout):
            # nats-py would keep retrying an unreachable list forever: fail fast instead.
            raise CdevError(f"cannot connect to {address}: no server answered")
        holder: list[BusRoom] = []

        async def on_error(exc: Exception) -> None:
            pass  # reconnects are reported through disconnected/reconnected

        async def on_disconnect() -> None:
            for r in holder:
                r.disconnected()

        async def on_reconnect() -> None:
            for r in holder:
                r.reconnected()

        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers,
                    name="cdev chat",
                    connect_timeout=max(1, int(timeout)),
                    reconnect_time_wait=self.reconnect_wait,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    dont_randomize=not self.randomize,
                    # Our own beats must come back: they measure our lag (bus.py).
                    no_echo=False,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                timeout * max(1, len(servers)),
            )
        except (TimeoutError, OSError, Exception) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else "no server answered"
            raise CdevError(f"cannot connect to {address}: {what}") from None
        if nc.max_payload < MAX_MESSAGE:
            await nc.close()
            raise CdevError(f"{address}: the servers' max_payload is below {MAX_MESSAGE} bytes")
        room = BusRoom(_NatsBus(nc), room_name, self.mode, self.config)
        holder.append(room)
        self.rooms.append(room)
        try:
            return await room.attach()
        except BaseException:
            await room.bus.close()
            raise


@hookimpl
def cdev_register_transports(register: Callable[..., None]) -> None:
    register(NatsTransport.name, NatsTransport.description, NatsTransport)

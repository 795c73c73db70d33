"""The broker: many peers in one room, like ``ncat --broker --chat``.

The broker's whole job is membership (ids, nicknames, each member's announced info) and
relaying, to everyone or to one member. It never holds a key and never reads what members
send each other: the PAKE, the group key, signatures and sequence numbers are end to end, in
:mod:`cdev.chat.room` (see ``docs/chat-protocol.md``); a message bus can take its place.
The hot path is callback-based (an asyncio Protocol per peer, not streams): each received
record is wrapped once and appended to every other peer's out-queue, and the queues are
flushed once per event-loop turn, so many records leave in one write() per peer.

Fairness: a sender is rate limited (token bucket) by pausing reads from it, which throttles a
flooding peer through TCP back-pressure without touching anyone else; a receiver whose queued
bytes exceed ``max_queue`` is disconnected with a reason, so a slow or stuck peer cannot make
the broker buffer without bound or stall the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from typing import Any

from cdev.chat.framing import (
    ANNOUNCE,
    DATA,
    DIRECT,
    DIRECT_PREFIX,
    DIRECT_TYPES,
    ERROR,
    GOODBYE,
    HEADER,
    HELLO,
    INFO,
    JOINED,
    KEYS,
    LEFT,
    MAX_BODY,
    MAX_INFO,
    PROTO,
    RELAY,
    RELAY_PREFIX,
    TYPE_NAMES,
    VERSION,
    VOUCH,
    WELCOME,
    ProtocolError,
    RecordParser,
    check_hello,
    check_inner,
    decode_json,
    encode_json,
)
from cdev.chat.framing import (
    field as jfield,
)
from cdev.chat.limits import HandshakeLimiter
from cdev.chat.options import NICK_RE
from cdev.errors import EXIT_OK
from cdev.transport import Transport, peer_label, peer_source

HARD_FACTOR = 16  # queued bytes above max_queue * HARD_FACTOR drop a peer at once
MAX_DATA = MAX_BODY - RELAY_PREFIX.size  # a relayed record must still fit in MAX_BODY


@dataclass
class BrokerConfig:
    encrypted: bool = False
    handshake_timeout: float = 10.0
    max_queue: int = 2 << 20  # bytes queued to one peer that it may stay above...
    slow_grace: float = 3.0  # ...for at most this many seconds
    rate: float = 1000.0  # records per second per sender, sustained
    burst: float = 1000.0
    max_peers: int = 10000
    quiet: bool = False
    # New connections per source (IP address or local user): a burst, then a rate. The
    # broker runs no crypto, so this only stops connection floods; the PAKE runs are
    # budgeted by each sponsoring member (room.py).
    handshake_burst: float = 500.0
    handshake_rate: float = 50.0


class PeerConn(asyncio.Protocol):
    """One peer's connection; the broker swaps it in as the transport's protocol."""

    def __init__(
        self, broker: Broker, transport: asyncio.Transport, keep: object, name: str
    ) -> None:
        self.broker = broker
        self.transport = transport
        self._keep = keep  # the StreamWriter closes the transport when collected
        self.name = name
        self.parser = RecordParser()
        self.id = 0
        self.nick = ""
        self.info = ""
        self.joined = False
        self.closed = False
        self.out: list[bytes] = []
        self.tokens = broker.config.burst
        self.stamp = asyncio.get_running_loop().time()
        self.said_goodbye = False
        self.over_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self.backlog: list[tuple[int, bytes]] = []

    def start(self, leftover: bytes, eof: bool) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.broker.config.handshake_timeout, self._hello_timeout)
        self.transport.write(self.broker.hello_frame)
        if leftover:
            self.data_received(leftover)
        if eof and not self.closed:
            self.connection_lost(None)
        elif not self.closed and not self.transport.is_reading():
            self.transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            records = self.parser.feed(data)
        except ProtocolError as exc:
            self.kick(str(exc))
            return
        if records:
            self._process(records)

    def _process(self, records: list[tuple[int, bytes]]) -> None:
        cfg = self.broker.config
        if self.joined:
            # Refill the sender's bucket once per batch; it is spent one record at a time.
            now = asyncio.get_running_loop().time()
            self.tokens = min(cfg.burst, self.tokens + (now - self.stamp) * cfg.rate)
            self.stamp = now
        relay = self.broker.relay
        for i, (rtype, body) in enumerate(records):
            if self.closed:
                return
            if not self.joined:
                self.broker.admit(self, rtype, body)
            elif self.tokens >= 1:
                relay(self, rtype, body)
            else:
                # Over its rate: keep the rest of this read (at most one socket read) and
                # stop reading until the bucket refills; TCP back-pressure does the rest.
                self.backlog = records[i:]
                self._paused = True
                self.transport.pause_reading()
                delay = (1 - self.tokens) / cfg.rate
                asyncio.get_running_loop().call_later(delay, self._resume)
                return

    def _resume(self) -> None:
        self._paused = False
        if self.closed:
            return
        backlog, self.backlog = self.backlog, []
        self._process(backlog)
        if not self._paused and not self.closed:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer:
            self._timer.cancel()
        self.broker.remove(self, "goodbye" if self.said_goodbye else "connection lost")

    # -- helpers ---------------------------------------------------------------------------
    def _hello_timeout(self) -> None:
        if not self.joined and not self.closed:
            self.kick(f"no handshake within {self.broker.config.handshake_timeout:g} s")

    def send_now(self, record: bytes) -> None:
        if not self.closed:
            self.broker.queue(self, record)

    def kick(self, reason: str, *, abort: bool = False, quiet: bool = False) -> None:
        """Disconnect with a reason: to the peer as ERROR, to the log and to the room."""
        if self.closed:
            return
        if not quiet:  # a flood of refused connections must not flood the log too
            self.broker.log(f"dropped {self.label}: {reason}")
        if abort:
            self.out.clear()
            self.transport.abort()  # its queue is what is wrong: do not wait to flush it
            self.finish(reason)
        else:
            self.broker.queue(self, encode_json(ERROR, {"message": reason}))
            self.finish(reason)

    def finish(self, reason: str) -> None:
        """Leave the room now; queued records still go out before the socket closes."""
        if self.closed:
            return
        self.broker.flush_one(self)
        self.transport.close()
        self.closed = True
        if self._timer:
            self._timer.cancel()
        self.broker.remove(self, reason)

    @property
    def label(self) -> str:
        return f"{self.nick} ({self.name})" if self.nick else self.name


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.peers: dict[int, PeerConn] = {}
        self.nicks: dict[str, PeerConn] = {}
        self.limiter = HandshakeLimiter(config.handshake_burst, config.handshake_rate)
        self._next_id = 1
        self._dirty: list[PeerConn] = []
        self._flush_pending = False
        self.connections = 0
        self.hello_frame = encode_json(
            HELLO,
            {
                "proto": PROTO,
                "version": VERSION,
                "role": "broker",
                "mode": "encrypted" if config.encrypted else "plain",
            },
        )

    def log(self, text: str) -> None:
        if not self.config.quiet:
            print(f"cdev: broker: {text}", file=sys.stderr, flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Transport handler: take the raw transport over from the stream objects."""
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        # Bytes the stream reader already buffered belong to the first records.
        leftover = bytes(getattr(reader, "_buffer", b""))
        conn = PeerConn(self, transport, writer, peer_label(writer))
        transport.set_protocol(conn)
        self.connections += 1
        if self.connections > self.config.max_peers:
            conn.kick(f"broker is full ({self.config.max_peers} peers)")
            return
        if not self.limiter.allow(peer_source(writer)):
            conn.kick("too many connections from your address: try again later", quiet=True)
            return
        conn.start(leftover, reader.at_eof())

    # -- joining ---------------------------------------------------------------------------
    def admit(self, conn: PeerConn, rtype: int, body: bytes) -> None:
        try:
            self._admit(conn, rtype, body)
        except ProtocolError as exc:
            conn.kick(str(exc))

    def _admit(self, conn: PeerConn, rtype: int, body: bytes) -> None:
        if rtype != HELLO:
            raise ProtocolError(f"expected HELLO, got {TYPE_NAMES[rtype]}")
        hello = decode_json(HELLO, body)
        check_hello(hello)
        if hello.get("role") != "join":
            raise ProtocolError("this is a broker: use 'cdev chat join'")
        nick = jfield(hello, "nick", str, HELLO)
        if not NICK_RE.fullmatch(nick):
            raise ProtocolError(f"bad nickname {nick[:40]!r}")
        mode = hello.get("mode")
        want = "encrypted" if self.config.encrypted else "plain"
        if mode != want:
            raise ProtocolError(
                "this room is encrypted: join with --encrypt"
                if self.config.encrypted
                else "this room is plain: join without --encrypt"
            )
        if nick in self.nicks:
            raise ProtocolError(f"nickname {nick!r} is taken")
        if conn._timer:
            conn._timer.cancel()
        conn.id, conn.nick, conn.joined = self._next_id, nick, True
        self._next_id += 1
        # WELCOME gives the member count; one JOINED per member follows, so a big room
        # never needs a record larger than the control-record limit.
        count = len(self.peers)
        conn.send_now(encode_json(WELCOME, {"id": conn.id, "nick": nick, "members": count}))
        for p in self.peers.values():
            conn.send_now(encode_json(JOINED, {"id": p.id, "nick": p.nick, "info": p.info}))
        joined = encode_json(JOINED, {"id": conn.id, "nick": nick, "info": ""})
        for p in self.peers.values():
            self.queue(p, joined)
        self.peers[conn.id] = conn
        self.nicks[nick] = conn
        self.log(f"{nick} joined from {conn.name} ({len(self.peers)} in the room)")

    # -- the hot path ----------------------------------------------------------------------
    def relay(self, src: PeerConn, rtype: int, body: bytes) -> None:
        if rtype != DATA and rtype != GOODBYE:
            self.relay_other(src, rtype, body)
            return
        if len(body) > MAX_DATA:
            src.kick(f"oversize record: {len(body)} bytes (maximum {MAX_DATA})")
            return
        src.tokens -= 1
        frame = (
            HEADER.pack(RELAY, 0, len(body) + RELAY_PREFIX.size)
            + RELAY_PREFIX.pack(src.id, rtype)
            + body
        )
        dirty = self._dirty
        for p in self.peers.values():
            if p is not src:
                if not p.out:
                    dirty.append(p)
                p.out.append(frame)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)
        if rtype == GOODBYE:
            src.said_goodbye = True
            src.finish("goodbye")

    def relay_other(self, src: PeerConn, rtype: int, body: bytes) -> None:
        """The rarer records: vouches, one member's handshake with another, announcements."""
        encrypted = self.config.encrypted
        if rtype in (VOUCH, KEYS) and encrypted:
            if len(body) > MAX_DATA:
                src.kick(f"oversize record: {len(body)} bytes (maximum {MAX_DATA})")
                return
            src.tokens -= 1
            frame = (
                HEADER.pack(RELAY, 0, len(body) + RELAY_PREFIX.size)
                + RELAY_PREFIX.pack(src.id, rtype)
                + body
            )
            for p in self.peers.values():
                if p is not src:
                    self.queue(p, frame)
        elif rtype == DIRECT and encrypted:
            if len(body) < DIRECT_PREFIX.size:
                src.kick("malformed DIRECT record")
                return
            to, inner = DIRECT_PREFIX.unpack_from(body)
            try:
                check_inner(inner, len(body) - DIRECT_PREFIX.size)
                if inner not in DIRECT_TYPES:
                    raise ProtocolError(f"a {TYPE_NAMES[inner]} record cannot go to one member")
            except ProtocolError as exc:
                src.kick(str(exc))
                return
            src.tokens -= 1
            target = self.peers.get(to)
            if target is not None and target is not src:  # gone already: nothing to do
                # DIRECT and RELAY prefixes have one size: the frame is as long as the record
                frame = HEADER.pack(RELAY, 0, len(body)) + RELAY_PREFIX.pack(src.id, inner)
                self.queue(target, frame + body[DIRECT_PREFIX.size :])
        elif rtype == ANNOUNCE and encrypted:
            try:
                info = body.decode("ascii")
            except UnicodeDecodeError:
                info = "\0"
            if len(body) > MAX_INFO or not all(" " < c <= "~" for c in info):
                src.kick(f"malformed ANNOUNCE record (at most {MAX_INFO} printable characters)")
                return
            src.tokens -= 1
            src.info = info
            record = encode_json(INFO, {"id": src.id, "info": info})
            for p in self.peers.values():
                if p is not src:
                    self.queue(p, record)
        else:
            src.kick(f"unexpected {TYPE_NAMES[rtype]} record after joining")

    def queue(self, p: PeerConn, record: bytes) -> None:
        if not p.out:
            self._dirty.append(p)
        p.out.append(record)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        dirty, self._dirty = self._dirty, []
        limit = self.config.max_queue
        loop = asyncio.get_running_loop()
        for p in dirty:
            if p.closed or not p.out:
                continue
            data = b"".join(p.out) if len(p.out) > 1 else p.out[0]
            p.out.clear()
            p.transport.write(data)
            queued = p.transport.get_write_buffer_size()
            if queued <= limit:
                p.over_since = None
                continue
            # A burst may briefly overshoot for a healthy reader; a peer that stays over
            # the bound (or overshoots it grossly) is the one that cannot keep up.
            now = loop.time()
            if p.over_since is None:
                p.over_since = now
            if queued > limit * HARD_FACTOR or now - p.over_since > self.config.slow_grace:
                p.kick(f"too slow: {queued} bytes queued (limit {limit})", abort=True)

    def flush_one(self, p: PeerConn) -> None:
        if p.out and not p.closed:
            p.transport.write(b"".join(p.out))
            p.out.clear()

    def remove(self, conn: PeerConn, reason: str) -> None:
        self.connections -= 1
        if not conn.joined or self.peers.get(conn.id) is not conn:
            return
        del self.peers[conn.id]
        self.nicks.pop(conn.nick, None)
        left = encode_json(LEFT, {"id": conn.id, "nick": conn.nick, "reason": reason})
        for p in self.peers.values():
            self.queue(p, left)
        self.log(f"{conn.nick} left: {reason} ({len(self.peers)} in the room)")

    def shutdown(self, reason: str) -> None:
        for p in list(self.peers.values()):
            p.kick(reason)


async def run_broker(
    transport: Transport,
    address: str,
    config: BrokerConfig,
    started: asyncio.Future[Any] | None = None,
) -> int:
    broker = Broker(config)
    server = await transport.serve(address, broker.handle)
    broker.log(f"listening on {address} ({'encrypted' if config.encrypted else 'plain'} room)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if started is not None:
        started.set_result(broker)
    try:
        await stop.wait()
    finally:
        server.close()
        broker.shutdown("broker is shutting down")
        await asyncio.sleep(0.05)  # let the ERROR records go out
    return EXIT_OK

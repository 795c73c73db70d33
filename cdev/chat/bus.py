"""The broker's role played over a message bus: relay and presence without a broker process.

A member of a bus room runs the unchanged member protocol (:class:`cdev.chat.client.RoomClient`
and its :class:`cdev.chat.room.RoomSession`) over a local socket pair. At the other end of the
pair a :class:`BusRoom` speaks the broker's side of the protocol for that one member: it sends
the broker HELLO, admits the member, lists who is in the room (WELCOME, JOINED, INFO, LEFT),
publishes the member's records (broadcast ones, and DIRECT ones addressed to one member) on the
room's subject, and hands the records meant for its member to it as RELAY records. There is
one BusRoom per member and none in the middle: the bus only carries what members publish.

Member ids are chosen by each member at random (32 bits, checked against those present) rather
than numbered by a broker, so that they mean the same member to everyone: the room protocol
names members by id in its VOUCH and ROSTER records.

Presence is kept by every BusRoom from what the others publish: ``who`` (a newcomer asks;
members answer ``here`` to its inbox), ``join``, ``info`` (the member's announced group), a
``beat`` every ``heartbeat`` seconds and ``leave``. A member silent while ``expiry`` seconds'
worth of our own beats came back to us is announced as gone (LEFT). Presence is not
authenticated, exactly like a broker's JOINED/LEFT: whoever can publish on the room's subject
has the broker's powers (docs/chat-bus.md), and no more: membership of the group, keys,
signatures and sequence numbers are end to end, in the members' RoomSessions.

Everything read from the bus is hostile: sizes are bounded before parsing, every field is
checked, a member cannot be announced twice, and answers to ``who`` are rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdev.chat.framing import (
    ANNOUNCE,
    BROADCAST_TYPES,
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
    LEFT,
    MAX_BODY,
    MAX_CONTROL,
    MAX_INFO,
    PROTO,
    RELAY,
    RELAY_PREFIX,
    TYPE_NAMES,
    VERSION,
    WELCOME,
    PeerClosed,
    ProtocolError,
    check_header,
    check_hello,
    check_inner,
    decode_json,
    encode_json,
    read_record,
)
from cdev.chat.framing import field as jfield
from cdev.chat.options import NICK_RE, close_writer
from cdev.errors import CdevError, UsageError

SUBJECT_PREFIX = f"cdev.chat.{VERSION}"
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
RECORD_TAG = b"R"
PRESENCE_TAG = b"P"
ROUTE = struct.Struct("!II")  # sender id, recipient id (0: everyone)
MAX_DATA = MAX_BODY - RELAY_PREFIX.size
# The biggest message a member publishes: tag, route, one record.
MAX_MESSAGE = 1 + ROUTE.size + HEADER.size + MAX_DATA
EVENTS = frozenset({"who", "here", "join", "beat", "info", "leave"})
MAX_ID = (1 << 32) - 1
MAX_EARLY_BYTES = 4 << 20  # what arrives between "who" and WELCOME, kept for the member


class Bus(Protocol):
    """What a BusRoom needs from a message bus (the nats transport provides it)."""

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None: ...

    async def subscribe(self, subject: str, handler: Callable[[str, str, bytes], None]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class BusConfig:
    heartbeat: float = 5.0  # seconds between presence beats (each one reaches every member)
    # A member silent while our own beats went round this long has left (see _on_own_beat).
    expiry: float = 20.0
    settle: float = 0.3  # how long a newcomer collects answers to "who"
    handshake_timeout: float = 10.0
    max_members: int = 10000
    max_queue: int = 32 << 20  # bytes queued to our member before records are dropped
    who_rate: float = 100.0  # answers to "who" per second (a bucket of this size)


def check_room(room: str) -> str:
    if not ROOM_RE.fullmatch(room):
        raise UsageError(f"bad room name {room[:80]!r}: 1-64 letters, digits, '-' or '_'")
    return room


def _good_info(info: object) -> bool:
    return isinstance(info, str) and len(info) <= MAX_INFO and all(" " < c <= "~" for c in info)


@dataclass
class Remote:
    id: int
    nick: str
    mode: str
    info: str
    seen: int  # our epoch when we last heard from it


@dataclass
class _Stats:
    dropped_hostile: int = 0  # messages from the bus that failed our checks
    dropped_unknown: int = 0  # records from members we do not know (yet)
    dropped_slow: int = 0  # records our own member did not read fast enough
    refused: list[str] = field(default_factory=list)


class BusRoom:
    """The broker side of one member's connection, with the room kept on the bus."""

    def __init__(
        self,
        bus: Bus,
        room: str,
        mode_hint: str | None = None,
        config: BusConfig | None = None,
    ) -> None:
        self.bus = bus
        self.room = check_room(room)
        self.subject = f"{SUBJECT_PREFIX}.{room}"
        self.id = 0
        self.inbox = ""
        self.mode_hint = mode_hint
        self.mode = mode_hint or "encrypted"
        self.config = config or BusConfig()
        self.members: dict[int, Remote] = {}
        # Members that left: a late beat does not bring them back (they must join again).
        self.departed: OrderedDict[int, None] = OrderedDict()
        self.stats = _Stats()
        self.nick = ""
        self.info = ""
        self.admitted = False
        self.closed = False
        self.gone = False  # our member said goodbye or left
        self.connected = True
        # Our own beats come back to us through the bus, in order with everything else:
        # ``epoch`` counts them, and time on the bus is measured in epochs, not seconds.
        self.epoch = 0
        self._beats = 0
        self._early: list[tuple[str, str, bytes]] = []
        self._early_bytes = 0
        self._rivals: set[int] = set()  # newcomers asking "who" while we were
        self._who_tokens = self.config.who_rate
        self._who_stamp = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pending: set[asyncio.Task[Any]] = set()
        self.finished = asyncio.Event()

    # -- the local end ---------------------------------------------------------------------
    async def attach(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Subscribe, ask who is there, and return the member's end of the connection."""
        await self.bus.subscribe(self.subject, self._on_message)
        # Random: a clash with a member present (2^-32 each) is refused after "who" below.
        self.id = self._fresh_id()
        self.inbox = f"{self.subject}.to.{self.id}"
        await self.bus.subscribe(self.inbox, self._on_message)
        await self._publish_presence("who", reply=self.inbox)
        await asyncio.sleep(self.config.settle)
        loop = asyncio.get_running_loop()
        # A room that looks empty may only have had its answers rate limited or lost: listen
        # for one round of beats before founding a group in it.
        deadline = loop.time() + self.config.heartbeat
        while not self.members and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self.members:
            # Ask once more: a newcomer that subscribed after our first "who" sees this one,
            # so every newcomer of the same moment knows of every other (the rivals below).
            await self._publish_presence("who", reply=self.inbox)
            await asyncio.sleep(self.config.settle)
        # Newcomers to an empty room at the same moment would each found a group of their own:
        # the one with the lowest id goes first, the others wait until it is there.
        deadline = loop.time() + self.config.handshake_timeout / 2
        while (
            not self.members and any(r < self.id for r in self._rivals) and loop.time() < deadline
        ):
            await asyncio.sleep(0.05)
        modes = {m.mode for m in self.members.values()}
        if len(modes) == 1:
            self.mode = modes.pop()  # an existing room keeps its mode, like a broker's
        if self.id in self.members:
            raise CdevError("could not pick a free member id: try again")
        ours, theirs = socket.socketpair()
        member = await asyncio.open_connection(sock=ours, limit=1 << 20)
        local_reader, local_writer = await asyncio.open_connection(sock=theirs, limit=1 << 20)
        self._writer = local_writer
        self._tasks.append(asyncio.create_task(self._serve(local_reader, local_writer)))
        return member

    def _fresh_id(self) -> int:
        while True:
            mid = int.from_bytes(os.urandom(4), "big")
            if 1 < mid <= MAX_ID and mid not in self.members:
                return mid

    def _send_local(self, record: bytes) -> None:
        w = self._writer
        if w is None or w.is_closing():
            return
        if w.transport.get_write_buffer_size() > self.config.max_queue:
            # Our member is not reading: drop rather than hoard; sequence numbers show the gap.
            self.stats.dropped_slow += 1
            return
        w.write(record)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "connection lost"
        try:
            try:
                async with asyncio.timeout(self.config.handshake_timeout):
                    self._send_local(self._hello())
                    rtype, body = await read_record(reader)
                    refusal = self._admit(rtype, body)
            except TimeoutError:
                refusal = f"no handshake within {self.config.handshake_timeout:g} s"
            except ProtocolError as exc:
                refusal = str(exc)
            if refusal is not None:
                self.stats.refused.append(refusal)
                self._send_local(encode_json(ERROR, {"message": refusal}))
                await writer.drain()
                return
            await self._publish_presence("join")
            self._tasks.append(asyncio.create_task(self._heartbeat()))
            while True:
                rtype, body = await read_record(reader)
                refusal = await self._from_member(rtype, body)
                if refusal is not None:
                    self._send_local(encode_json(ERROR, {"message": refusal}))
                    reason = "protocol error"
                    return
                if rtype == GOODBYE:
                    # Out of the room for the others; our member may still read what is
                    # on its way (like a half-closed connection) until it closes its end.
                    reason = "goodbye"
                    await self._depart(reason)
                    if await reader.read(1):
                        self._send_local(encode_json(ERROR, {"message": "record after GOODBYE"}))
                    return
        except (PeerClosed, ProtocolError, ConnectionError, OSError):
            pass
        except CdevError:
            reason = "bus connection lost"
        finally:
            await self._leave(reason)
            await close_writer(writer)
            self.finished.set()

    async def _from_member(self, rtype: int, body: bytes) -> str | None:
        """Publish one record of our member; a reason to drop it on a protocol error."""
        encrypted = self.mode == "encrypted"
        if rtype in (DATA, GOODBYE) or (rtype in BROADCAST_TYPES and encrypted):
            if len(body) > MAX_DATA:
                return f"oversize record: {len(body)} bytes (maximum {MAX_DATA})"
            await self._publish_record(0, rtype, body)
        elif rtype == DIRECT and encrypted:
            if len(body) < DIRECT_PREFIX.size:
                return "malformed DIRECT record"
            to, inner = DIRECT_PREFIX.unpack_from(body)
            try:
                check_inner(inner, len(body) - DIRECT_PREFIX.size)
            except ProtocolError as exc:
                return str(exc)
            if inner not in DIRECT_TYPES:
                return f"a {TYPE_NAMES[inner]} record cannot go to one member"
            if to in self.members:  # gone already: nothing to do
                await self._publish_record(to, inner, body[DIRECT_PREFIX.size :])
        elif rtype == ANNOUNCE and encrypted:
            try:
                info = body.decode("ascii")
            except UnicodeDecodeError:
                info = "\0"
            if not _good_info(info):
                return f"malformed ANNOUNCE record (at most {MAX_INFO} printable characters)"
            self.info = info
            await self._publish_presence("info")
        else:
            return f"unexpected {TYPE_NAMES[rtype]} record after joining"
        return None

    def _hello(self) -> bytes:
        return encode_json(
            HELLO, {"proto": PROTO, "version": VERSION, "role": "broker", "mode": self.mode}
        )

    def _admit(self, rtype: int, body: bytes) -> str | None:
        """Check our member's HELLO against the room; a refusal reason, or None."""
        if rtype != HELLO:
            raise ProtocolError(f"expected HELLO, got {TYPE_NAMES[rtype]}")
        hello = decode_json(HELLO, body)
        check_hello(hello)
        if hello.get("role") != "join":
            raise ProtocolError("this is a room: use 'cdev chat join'")
        nick = jfield(hello, "nick", str, HELLO)
        if not NICK_RE.fullmatch(nick):
            raise ProtocolError(f"bad nickname {nick[:40]!r}")
        if hello.get("mode") != self.mode:
            return (
                "this room is encrypted: join with --encrypt"
                if self.mode == "encrypted"
                else "this room is plain: join without --encrypt"
            )
        if any(m.nick == nick for m in self.members.values()):
            return f"nickname {nick!r} is taken"
        self.nick = nick
        # Members of the other mode are not in our room.
        for m in [m for m in self.members.values() if m.mode != self.mode]:
            del self.members[m.id]
        self._send_local(
            encode_json(WELCOME, {"id": self.id, "nick": nick, "members": len(self.members)})
        )
        self.admitted = True
        for m in self.members.values():
            self._send_local(encode_json(JOINED, {"id": m.id, "nick": m.nick, "info": m.info}))
        early, self._early = self._early, []
        for subject, reply, data in early:
            self._on_message(subject, reply, data)
        return None

    # -- publishing ------------------------------------------------------------------------
    async def _publish_record(self, to: int, rtype: int, body: bytes) -> None:
        payload = RECORD_TAG + ROUTE.pack(self.id, to) + HEADER.pack(rtype, 0, len(body)) + body
        await self.bus.publish(self.subject, payload)

    def _presence(self, event: str, **extra: Any) -> bytes:
        obj: dict[str, Any] = {"ev": event, "id": self.id, "mode": self.mode}
        if self.nick:
            obj |= {"nick": self.nick, "info": self.info}
        obj |= extra
        return PRESENCE_TAG + json.dumps(obj, separators=(",", ":")).encode()

    async def _publish_presence(self, event: str, reply: str = "", **extra: Any) -> None:
        await self.bus.publish(self.subject, self._presence(event, **extra), reply)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            with contextlib.suppress(CdevError, OSError):
                await coro

        task = asyncio.create_task(guarded())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _heartbeat(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.config.heartbeat)
            if not self.connected:
                continue
            with contextlib.suppress(CdevError, OSError):
                await self._publish_presence("beat", n=self._beats)
            self._beats += 1

    def _on_own_beat(self, n: object) -> None:
        """One of our beats came back: everything the bus held for us before it is processed.

        A member is expired only when ``expiry`` seconds' worth of our own beats went round
        while it sent nothing, so our own lag (a busy process, a slow link, a server's
        backlog) never makes a live member look gone, and while we are cut off from the bus
        nobody is expired, because our beats do not come back either.
        """
        if n != self.epoch:
            return  # not ours (someone replaying or forging it), or a duplicate
        self.epoch += 1
        epochs = max(2, round(self.config.expiry / self.config.heartbeat))
        for m in [m for m in self.members.values() if self.epoch - m.seen > epochs]:
            self._remove(m, f"silent for {self.config.expiry:g} s (lost its bus connection?)")

    def disconnected(self) -> None:
        self.connected = False

    def reconnected(self) -> None:
        """Back on the bus (maybe through another server): tell the room we are still here."""
        self.connected = True
        if self.admitted and not self.closed and not self.gone:
            self._spawn(self._publish_presence("beat"))

    async def _depart(self, reason: str) -> None:
        """Tell the room our member has left (once)."""
        if self.gone:
            return
        self.gone = True
        if self.admitted:
            with contextlib.suppress(CdevError, OSError):
                await self._publish_presence("leave", reason=reason)

    async def _leave(self, reason: str) -> None:
        if self.closed:
            return
        await self._depart(reason)
        self.closed = True
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        with contextlib.suppress(CdevError, OSError):
            await self.bus.close()

    # -- what the bus brings ---------------------------------------------------------------
    def _on_message(self, subject: str, reply: str, data: bytes) -> None:
        if self.closed:
            return
        if subject not in (self.subject, self.inbox) or not 1 < len(data) <= MAX_MESSAGE:
            self.stats.dropped_hostile += 1
            return
        if self._writer is not None and not self.admitted:
            # Between "who" and WELCOME: keep (bounded) and process once admitted.
            if self._early_bytes + len(data) <= MAX_EARLY_BYTES:
                self._early.append((subject, reply, data))
                self._early_bytes += len(data)
            return
        tag = data[:1]
        try:
            if tag == RECORD_TAG:
                self._on_record(data)
            elif tag == PRESENCE_TAG:
                self._on_presence(reply, data[1:])
            else:
                raise ProtocolError("unknown message")
        except ProtocolError:
            self.stats.dropped_hostile += 1

    def _on_record(self, data: bytes) -> None:
        if len(data) < 1 + ROUTE.size + HEADER.size:
            raise ProtocolError("short record")
        sender, to = ROUTE.unpack_from(data, 1)
        if sender == self.id or to not in (0, self.id):
            return  # a handshake record for another member
        m = self.members.get(sender)
        if m is None or not self.admitted:
            self.stats.dropped_unknown += 1
            return
        record = data[1 + ROUTE.size :]
        rtype, flags, length = HEADER.unpack_from(record)
        check_header(rtype, flags, length)
        if length != len(record) - HEADER.size:
            raise ProtocolError("bad length")
        encrypted = self.mode == "encrypted"
        if to == 0:
            ok = rtype in (DATA, GOODBYE) or (encrypted and rtype in BROADCAST_TYPES)
        else:
            ok = encrypted and rtype in DIRECT_TYPES
        if not ok or length > MAX_DATA:
            raise ProtocolError("record type not allowed here")
        m.seen = self.epoch
        body = record[HEADER.size :]
        self._send_local(
            HEADER.pack(RELAY, 0, len(body) + RELAY_PREFIX.size)
            + RELAY_PREFIX.pack(sender, rtype)
            + body
        )
        if rtype == GOODBYE:
            self._remove(m, "goodbye")

    def _on_presence(self, reply: str, body: bytes) -> None:
        if len(body) > MAX_CONTROL:
            raise ProtocolError("oversize presence")
        obj = decode_json(JOINED, body)
        event = obj.get("ev")
        mid = jfield(obj, "id", int, JOINED)
        if event not in EVENTS or not 1 < mid <= MAX_ID:
            raise ProtocolError("bad presence")
        if mid == self.id:
            if event == "beat":
                self._on_own_beat(obj.get("n"))
            return
        if event == "who":
            if not self.nick and len(self._rivals) < 1024:
                self._rivals.add(mid)
            ok = reply == f"{self.subject}.to.{mid}" and self.nick and not self.gone
            if ok and self._who_allowed():
                self._spawn(self.bus.publish(reply, self._presence("here")))
            return
        m = self.members.get(mid)
        if event == "leave":
            if m is not None:
                reason = obj.get("reason")
                self._remove(m, reason[:200] if isinstance(reason, str) else "left")
            return
        if m is not None:
            m.seen = self.epoch
            info = obj.get("info", "")
            if event == "info" and _good_info(info) and info != m.info:
                m.info = info
                if self.admitted:
                    self._send_local(encode_json(INFO, {"id": m.id, "info": info}))
            return
        if mid in self.departed:
            return  # a late beat from a member that left: it must join again
        self._add(obj, mid)

    def _add(self, obj: dict[str, Any], mid: int) -> None:
        nick = jfield(obj, "nick", str, JOINED)
        if not NICK_RE.fullmatch(nick):
            raise ProtocolError("bad nick")
        mode = obj.get("mode")
        info = obj.get("info", "")
        if mode not in ("plain", "encrypted") or not _good_info(info):
            raise ProtocolError("bad presence")
        if len(self.members) >= self.config.max_members:
            raise ProtocolError("room full")
        if self.admitted and mode != self.mode:
            raise ProtocolError("not of this room")  # the other mode: not our room
        m = Remote(mid, nick, mode, info, self.epoch)
        self.members[mid] = m
        if self.admitted:
            self._send_local(encode_json(JOINED, {"id": mid, "nick": nick, "info": info}))

    def _remove(self, m: Remote, reason: str) -> None:
        del self.members[m.id]
        self.departed[m.id] = None
        if len(self.departed) > 4 * self.config.max_members:
            self.departed.popitem(last=False)
        if self.admitted:
            self._send_local(encode_json(LEFT, {"id": m.id, "nick": m.nick, "reason": reason}))

    def _who_allowed(self) -> bool:
        now = time.monotonic()
        rate = self.config.who_rate
        self._who_tokens = min(rate, self._who_tokens + (now - self._who_stamp) * rate)
        self._who_stamp = now
        if self._who_tokens < 1:
            return False
        self._who_tokens -= 1
        return True

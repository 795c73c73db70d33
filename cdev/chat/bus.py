"""The broker's role played over a message bus: relay and presence without a broker process.

A member of a bus room runs the unchanged member protocol (:class:`cdev.chat.client.RoomClient`)
over a local socket pair. At the other end of the pair a :class:`BusRoom` speaks the broker's
side of the protocol for that one member: it sends the broker HELLO, admits the member, lists
who is in the room (WELCOME, JOINED), publishes the member's DATA/GOODBYE records on the room's
subject and hands every other member's records to it as RELAY records. There is one BusRoom per
member and none in the middle: the bus only carries what members publish.

Presence (who is in the room) is kept by every BusRoom from what the others publish: ``who``
(a newcomer asks; members answer ``here`` to its inbox), ``join``, a ``beat`` every
``heartbeat`` seconds, and ``leave``. A member not heard from for ``expiry`` seconds is announced
as gone (LEFT). Presence is not authenticated, exactly like a broker's JOINED/LEFT: whoever can
publish on the room's subject has the broker's powers (see docs/chat-protocol.md), and no more:
records stay sealed and numbered end to end by the members.

Everything read from the bus is hostile: sizes are bounded before parsing, every field is
checked, a member cannot be announced twice or with another member's nonce, and answers to
``who`` are rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdev.chat import crypto
from cdev.chat.framing import (
    DATA,
    ERROR,
    GOODBYE,
    HEADER,
    HELLO,
    JOINED,
    LEFT,
    MAX_BODY,
    MAX_CONTROL,
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
    decode_json,
    encode_json,
    hex_field,
    read_record,
)
from cdev.chat.framing import field as jfield
from cdev.chat.options import NICK_RE, close_writer
from cdev.errors import CdevError, UsageError

SUBJECT_PREFIX = "cdev.chat.1"
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOKEN_SIZE = 16
RECORD_TAG = b"R"
PRESENCE_TAG = b"P"
MAX_DATA = MAX_BODY - RELAY_PREFIX.size
# The biggest message a member publishes: tag, token, one record.
MAX_MESSAGE = 1 + TOKEN_SIZE + HEADER.size + MAX_DATA
EVENTS = frozenset({"who", "here", "join", "beat", "leave"})


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
    who_rate: float = 20.0  # answers to "who" per second (a bucket of this size)


def check_room(room: str) -> str:
    if not ROOM_RE.fullmatch(room):
        raise UsageError(f"bad room name {room[:80]!r}: 1-64 letters, digits, '-' or '_'")
    return room


def room_salt(room: str) -> bytes:
    """Every member of a room derives the same salt; nobody on the bus chooses it."""
    return hashlib.sha256(b"cdev-chat bus room salt\0" + room.encode()).digest()[: crypto.SALT_SIZE]


@dataclass
class Remote:
    token: str
    nick: str
    nonce: str
    mode: str
    verifier: str
    seq: int
    seen: int  # our epoch when we last heard from it
    id: int = 0


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
        scrypt: tuple[int, int, int] = (crypto.CHAT_SCRYPT.log_n, crypto.CHAT_SCRYPT.r,
                                        crypto.CHAT_SCRYPT.p),
    ) -> None:  # fmt: skip
        self.bus = bus
        self.room = check_room(room)
        self.subject = f"{SUBJECT_PREFIX}.{room}"
        self.token = os.urandom(TOKEN_SIZE)
        self.token_hex = self.token.hex()
        self.inbox = f"{self.subject}.to.{self.token_hex}"
        self.mode_hint = mode_hint
        self.mode = mode_hint or "encrypted"
        self.config = config or BusConfig()
        self.scrypt = scrypt
        self.salt = room_salt(room)
        self.members: dict[str, Remote] = {}
        self.by_nonce: dict[str, str] = {}
        # Tokens of members that left: (when, records seen from them, whether they expired).
        self.departed: OrderedDict[str, tuple[float, int, bool]] = OrderedDict()
        self.stats = _Stats()
        self.nick = ""
        self.nonce = ""
        self.verifier = ""
        self.seq = 0  # our member's next record number (it numbers from 0)
        self.admitted = False
        self.closed = False
        self.gone = False  # our member said goodbye or left
        self.connected = True
        # Our own beats come back to us through the bus, in order with everything else:
        # ``epoch`` counts them, and time on the bus is measured in epochs, not seconds.
        self.epoch = 0
        self._beats = 0
        self._next_id = 2  # our member is 1
        self._early: list[tuple[str, str, bytes]] = []
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
        await self.bus.subscribe(self.inbox, self._on_message)
        await self._publish_presence("who", reply=self.inbox)
        await asyncio.sleep(self.config.settle)
        modes = {m.mode for m in self.members.values()}
        if len(modes) == 1:
            self.mode = modes.pop()  # an existing room keeps its mode, like a broker's
        ours, theirs = socket.socketpair()
        member = await asyncio.open_connection(sock=ours, limit=1 << 20)
        local_reader, local_writer = await asyncio.open_connection(sock=theirs, limit=1 << 20)
        self._writer = local_writer
        self._tasks.append(asyncio.create_task(self._serve(local_reader, local_writer)))
        return member

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
                if rtype not in (DATA, GOODBYE):
                    refusal = f"unexpected {TYPE_NAMES[rtype]} record after joining"
                    self._send_local(encode_json(ERROR, {"message": refusal}))
                    reason = "protocol error"
                    return
                if len(body) > MAX_DATA:
                    self._send_local(encode_json(ERROR, {"message": "oversize record"}))
                    reason = "protocol error"
                    return
                await self.bus.publish(
                    self.subject,
                    RECORD_TAG + self.token + HEADER.pack(rtype, 0, len(body)) + body,
                )
                self.seq += 1
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

    def _hello(self) -> bytes:
        return encode_json(
            HELLO,
            {
                "proto": PROTO,
                "version": VERSION,
                "role": "broker",
                "mode": self.mode,
                "salt": self.salt.hex(),
                "scrypt": list(self.scrypt),
            },
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
        nonce = hex_field(hello, "nonce", crypto.NONCE_SIZE, HELLO).hex()
        if hello.get("mode") != self.mode:
            return (
                "this room is encrypted: join with --encrypt"
                if self.mode == "encrypted"
                else "this room is plain: join without --encrypt"
            )
        verifier = ""
        if self.mode == "encrypted":
            verifier = hex_field(hello, "verifier", 32, HELLO).hex()
            for m in self.members.values():
                if not hmac.compare_digest(m.verifier, verifier):
                    return "wrong passphrase: key confirmation against the room failed"
        if any(m.nick == nick for m in self.members.values()):
            return f"nickname {nick!r} is taken"
        if nonce in self.by_nonce:
            return "nonce already in use in the room"
        self.nick, self.nonce, self.verifier = nick, nonce, verifier
        self._send_local(
            encode_json(WELCOME, {"id": 1, "nick": nick, "members": len(self.members)})
        )
        self.admitted = True
        for m in self.members.values():
            self._announce(m)
        early, self._early = self._early, []
        for subject, reply, data in early:
            self._on_message(subject, reply, data)
        return None

    # -- publishing ------------------------------------------------------------------------
    def _presence(self, event: str, **extra: Any) -> bytes:
        obj: dict[str, Any] = {"ev": event, "token": self.token_hex, "mode": self.mode}
        if self.nick:
            obj |= {"nick": self.nick, "nonce": self.nonce, "seq": self.seq}
            if self.verifier:
                obj["verifier"] = self.verifier
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
            self._remove(m, f"silent for {self.config.expiry:g} s (lost its bus connection?)", True)

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
            if len(self._early) < 10000:
                self._early.append((subject, reply, data))
            return
        tag = data[:1]
        if tag == RECORD_TAG:
            self._on_record(data)
        elif tag == PRESENCE_TAG:
            try:
                self._on_presence(reply, data[1:])
            except ProtocolError:
                self.stats.dropped_hostile += 1
        else:
            self.stats.dropped_hostile += 1

    def _on_record(self, data: bytes) -> None:
        token = data[1 : 1 + TOKEN_SIZE].hex()
        if token == self.token_hex:
            return  # our own record, back from the bus
        record = data[1 + TOKEN_SIZE :]
        m = self.members.get(token)
        if m is None or not self.admitted:
            self.stats.dropped_unknown += 1
            return
        if len(record) < HEADER.size:
            self.stats.dropped_hostile += 1
            return
        rtype, flags, length = HEADER.unpack_from(record)
        try:
            check_header(rtype, flags, length)
        except ProtocolError:
            length = -1
        if length != len(record) - HEADER.size or rtype not in (DATA, GOODBYE):
            self.stats.dropped_hostile += 1
            return
        m.seen = self.epoch
        m.seq += 1
        body = record[HEADER.size :]
        self._send_local(
            HEADER.pack(RELAY, 0, len(body) + RELAY_PREFIX.size)
            + RELAY_PREFIX.pack(m.id, rtype)
            + body
        )
        if rtype == GOODBYE:
            self._remove(m, "goodbye")

    def _on_presence(self, reply: str, body: bytes) -> None:
        if len(body) > MAX_CONTROL:
            raise ProtocolError("oversize presence")
        obj = decode_json(JOINED, body)
        event = obj.get("ev")
        token = hex_field(obj, "token", TOKEN_SIZE, JOINED).hex()
        if event not in EVENTS:
            raise ProtocolError("bad presence")
        if token == self.token_hex:
            if event == "beat":
                self._on_own_beat(obj.get("n"))
            return
        if event == "who":
            ok = reply == f"{self.subject}.to.{token}" and self.nick and not self.gone
            if ok and self._who_allowed():
                self._spawn(self.bus.publish(reply, self._presence("here")))
            return
        if event == "leave":
            m = self.members.get(token)
            if m is not None:
                reason = obj.get("reason")
                text = reason[:200] if isinstance(reason, str) else "left"
                self._remove(m, text)
            return
        m = self.members.get(token)
        if m is not None:
            m.seen = self.epoch
            return
        seen = None
        if token in self.departed:
            _, seen, expired = self.departed[token]
            if not expired:
                return  # a late beat from a member that said goodbye
            # Back after a bus outage: resume from what we saw, so the receiver's sequence
            # check reports what was lost meanwhile instead of hiding it.
            del self.departed[token]
        self._add(obj, token, seen)

    def _add(self, obj: dict[str, Any], token: str, seen: int | None = None) -> None:
        nick = jfield(obj, "nick", str, JOINED)
        if not NICK_RE.fullmatch(nick):
            raise ProtocolError("bad nick")
        nonce = hex_field(obj, "nonce", crypto.NONCE_SIZE, JOINED).hex()
        mode = obj.get("mode")
        seq = jfield(obj, "seq", int, JOINED)
        if mode not in ("plain", "encrypted") or not 0 <= seq < 1 << 63:
            raise ProtocolError("bad presence")
        verifier = ""
        if mode == "encrypted":
            verifier = hex_field(obj, "verifier", 32, JOINED).hex()
        if nonce == self.nonce or nonce in self.by_nonce:
            # Two members with one nonce would share keys: never announce the second.
            raise ProtocolError("duplicate nonce")
        if len(self.members) >= self.config.max_members:
            raise ProtocolError("room full")
        if self.admitted and (
            mode != self.mode or not hmac.compare_digest(verifier, self.verifier)
        ):
            # Not a member of our room (other passphrase or mode): its records would fail.
            raise ProtocolError("not of this room")
        if seen is not None:
            seq = min(seq, seen)
        m = Remote(token, nick, nonce, mode, verifier, seq, self.epoch)
        self.members[token] = m
        self.by_nonce[nonce] = token
        if self.admitted:
            self._announce(m)

    def _announce(self, m: Remote) -> None:
        m.id = self._next_id
        self._next_id += 1
        self._send_local(
            encode_json(JOINED, {"id": m.id, "nick": m.nick, "nonce": m.nonce, "seq": m.seq})
        )

    def _remove(self, m: Remote, reason: str, expired: bool = False) -> None:
        del self.members[m.token]
        self.by_nonce.pop(m.nonce, None)
        self.departed[m.token] = (time.monotonic(), m.seq, expired)
        if len(self.departed) > 4 * self.config.max_members:
            self.departed.popitem(last=False)
        if self.admitted and m.id:
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

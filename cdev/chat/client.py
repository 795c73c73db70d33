"""A peer of a broker (``cdev chat join``).

In an encrypted room every peer derives the room key from the passphrase and the broker's
salt, then its own sending keys from the room key, its random nonce and its nickname. The
receivers derive the same per-sender keys from what the broker announces, so the broker can
neither read messages nor pass one peer's records off as another's; each sender numbers its
records from 0 and receivers check the numbers, so the broker cannot replay, reorder or drop
records unnoticed either.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from cdev.chat import crypto
from cdev.chat.framing import (
    DATA,
    ERROR,
    GOODBYE,
    HELLO,
    JOINED,
    LEFT,
    PROTO,
    RELAY,
    RELAY_PREFIX,
    TYPE_NAMES,
    VERSION,
    WELCOME,
    PeerClosed,
    ProtocolError,
    check_hello,
    decode_json,
    encode,
    encode_json,
    field,
    hex_field,
    read_record,
)
from cdev.chat.options import NICK_RE, ChatOptions, close_writer
from cdev.chat.twopeer import _scrypt_params, error_text
from cdev.chat.ui import ChatUI, LineSource
from cdev.errors import EXIT_OK, CdevError, IntegrityError
from cdev.provider import Provider
from cdev.transport import Transport


def sender_keys(room_key: bytes, nonce: bytes, nick: str) -> tuple[bytes, bytes]:
    """Per-sender keys: bound to the sender's nonce and nickname."""
    context = nonce + nick.encode()
    return (
        crypto.derive(room_key, "sender enc", context),
        crypto.derive(room_key, "sender mac", context),
    )


def room_verifier(room_key: bytes, salt: bytes) -> bytes:
    return crypto.derive(room_key, "room verifier", salt)


@dataclass
class Member:
    id: int
    nick: str
    nonce: bytes
    opener: crypto.Opener | None = None
    said_goodbye: bool = False


@dataclass
class Event:
    """What the room told us: a message, a notice, or a member's goodbye."""

    kind: str  # "message", "joined", "left", "goodbye"
    nick: str
    text: bytes = b""


class RoomClient:
    """The protocol side of a room peer, without any terminal I/O (used by tests and benchmarks)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opts: ChatOptions
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.opts = opts
        self.members: dict[int, Member] = {}
        self.id = 0
        self.sealer: crypto.Sealer | None = None
        self.room_key: bytes | None = None
        self.fingerprint: str | None = None
        self.nonce = os.urandom(crypto.NONCE_SIZE)

    async def handshake(self, room_key: bytes | None = None) -> None:
        """Join the room. ``room_key`` skips scrypt when the caller already derived it."""
        opts = self.opts
        async with asyncio.timeout(opts.handshake_timeout):
            rtype, body = await self._read("the broker's HELLO")
            if rtype == ERROR:
                raise CdevError(f"broker refused: {error_text(body)}")
            if rtype != HELLO:
                raise ProtocolError(f"expected HELLO from the broker, got {TYPE_NAMES[rtype]}")
            hello = decode_json(HELLO, body)
            check_hello(hello)
            if hello.get("role") != "broker":
                raise ProtocolError("the peer is not a broker: use 'cdev chat connect'")
            mode = hello.get("mode")
            if mode != opts.mode:
                raise CdevError(
                    "the broker runs an encrypted room: add --encrypt"
                    if mode == "encrypted"
                    else "the broker runs a plain room: drop --encrypt"
                )
            mine: dict[str, Any] = {
                "proto": PROTO,
                "version": VERSION,
                "role": "join",
                "nick": opts.nick,
                "mode": opts.mode,
                "nonce": self.nonce.hex(),
            }
            if opts.encrypt:
                assert opts.provider is not None and opts.passphrase is not None
                salt = hex_field(hello, "salt", crypto.SALT_SIZE, HELLO)
                if room_key is None:
                    params = _scrypt_params(hello)
                    room_key = await asyncio.to_thread(
                        crypto.master_key, opts.passphrase, salt, params
                    )
                self.room_key = room_key
                mine["verifier"] = room_verifier(room_key, salt).hex()
                self.sealer = crypto.Sealer(
                    opts.provider, *sender_keys(room_key, self.nonce, opts.nick)
                )
                self.fingerprint = crypto.fingerprint(room_key, salt)
            self.writer.write(encode_json(HELLO, mine))
            rtype, body = await self._read("the broker's WELCOME")
            if rtype == ERROR:
                raise CdevError(f"broker refused: {error_text(body)}")
            if rtype != WELCOME:
                raise ProtocolError(f"expected WELCOME, got {TYPE_NAMES[rtype]}")
            welcome = decode_json(WELCOME, body)
            self.id = field(welcome, "id", int, WELCOME)
            count = field(welcome, "members", int, WELCOME)
            for _ in range(count):  # the members already present, one JOINED each
                rtype, body = await self._read("the member list")
                if rtype != JOINED:
                    raise ProtocolError(f"expected JOINED, got {TYPE_NAMES[rtype]}")
                self._add(decode_json(JOINED, body), JOINED)

    async def _read(self, what: str) -> tuple[int, bytes]:
        try:
            return await read_record(self.reader)
        except PeerClosed:
            raise CdevError(f"broker closed the connection before {what}") from None

    def _add(self, m: dict[str, Any], rtype: int) -> Member:
        mid = field(m, "id", int, rtype)
        nick = field(m, "nick", str, rtype)
        if not NICK_RE.fullmatch(nick):
            raise ProtocolError(f"malformed {TYPE_NAMES[rtype]} record: bad nick")
        nonce = hex_field(m, "nonce", crypto.NONCE_SIZE, rtype)
        if (
            mid in self.members
            or mid == self.id
            or nonce == self.nonce
            or any(x.nonce == nonce for x in self.members.values())
        ):
            # Two members with one nonce and nick would share keys: a replay vector.
            raise IntegrityError(f"broker announced a duplicate member {nick!r}")
        member = Member(mid, nick, nonce)
        self.members[mid] = member
        return member

    def _opener(self, member: Member) -> crypto.Opener:
        if member.opener is None:
            assert self.room_key is not None and self.opts.provider is not None
            enc, mac = sender_keys(self.room_key, member.nonce, member.nick)
            member.opener = crypto.Opener(self.opts.provider, enc, mac, who=member.nick)
        return member.opener

    def message_record(self, text: bytes) -> bytes:
        body = self.sealer.seal(DATA, text) if self.sealer else text
        return encode(DATA, body)

    def goodbye_record(self) -> bytes:
        return encode(GOODBYE, self.sealer.seal(GOODBYE, b"") if self.sealer else b"")

    async def send(self, text: bytes) -> None:
        self.writer.write(self.message_record(text))
        await self.writer.drain()

    async def goodbye(self) -> None:
        self.writer.write(self.goodbye_record())
        await self.writer.drain()

    async def receive(self) -> Event:
        """The next event; CdevError when the broker closes or a record fails its checks."""
        try:
            rtype, body = await read_record(self.reader)
        except PeerClosed:
            raise CdevError("the broker closed the connection") from None
        if rtype == RELAY:
            if len(body) < RELAY_PREFIX.size:
                raise ProtocolError("malformed RELAY record")
            sender, inner = RELAY_PREFIX.unpack_from(body)
            member = self.members.get(sender)
            if member is None or member.said_goodbye:
                raise ProtocolError(f"RELAY record from unknown or departed member {sender}")
            payload = body[RELAY_PREFIX.size :]
            if inner not in (DATA, GOODBYE):
                raise ProtocolError(f"RELAY of unexpected record type {inner}")
            text = self._opener(member).open(inner, payload) if self.sealer else payload
            if inner == GOODBYE:
                member.said_goodbye = True
                return Event("goodbye", member.nick)
            return Event("message", member.nick, text)
        if rtype == JOINED:
            member = self._add(decode_json(JOINED, body), JOINED)
            return Event("joined", member.nick)
        if rtype == LEFT:
            obj = decode_json(LEFT, body)
            gone = self.members.pop(field(obj, "id", int, LEFT), None)
            if gone is None:
                raise ProtocolError("LEFT record for an unknown member")
            if gone.opener:
                gone.opener.close()
            reason = str(obj.get("reason", ""))[:200]
            if reason == "goodbye" and not gone.said_goodbye:
                reason = "left without an authenticated goodbye"
            return Event("left", gone.nick, reason.encode())
        if rtype == ERROR:
            raise CdevError(f"broker: {error_text(body)}")
        raise ProtocolError(f"unexpected {TYPE_NAMES[rtype]} record from the broker")

    async def close(self) -> None:
        if self.sealer:
            self.sealer.close()
        for m in self.members.values():
            if m.opener:
                m.opener.close()
        await close_writer(self.writer)


async def open_room(
    transport: Transport,
    address: str,
    opts: ChatOptions,
    provider: Provider | None = None,
    room_key: bytes | None = None,
) -> RoomClient:
    reader, writer = await transport.connect(address, opts.connect_timeout)
    client = RoomClient(reader, writer, opts)
    try:
        await client.handshake(room_key)
    except TimeoutError:
        await client.close()
        raise CdevError(
            f"no handshake from {address} within {opts.handshake_timeout:g} s"
        ) from None
    except BaseException:
        await client.close()
        raise
    return client


async def join(transport: Transport, address: str, opts: ChatOptions, ui: ChatUI) -> int:
    client = await open_room(transport, address, opts)
    if client.fingerprint:
        ui.notice(f"room fingerprint {client.fingerprint} (compare it with the others)")
    names = ", ".join(m.nick for m in client.members.values()) or "nobody else yet"
    ui.notice(f"joined as {opts.nick}; in the room: {names}")
    lines = LineSource()

    async def pump_out() -> None:
        while (line := await lines.get()) is not None:
            await client.send(line)
        await client.goodbye()

    async def pump_in() -> None:
        while True:
            ev = await client.receive()
            if ev.kind == "message":
                ui.message(ev.nick, ev.text)
            elif ev.kind == "joined":
                ui.notice(f"{ev.nick} joined")
            elif ev.kind == "left":
                ui.notice(f"{ev.nick} left ({ev.text.decode()})")

    out_task = asyncio.create_task(pump_out())
    in_task = asyncio.create_task(pump_in())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:
            in_task.result()  # always an error: the room never ends on its own
        try:
            out_task.result()
        except (ConnectionError, OSError) as exc:
            raise CdevError(f"connection to the broker lost: {exc.strerror or exc}") from None
        return EXIT_OK
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await client.close()

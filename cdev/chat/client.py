"""A member of a broker's room (``cdev chat join``): the broker's wire on one side, the
member-side room protocol (:class:`cdev.chat.room.RoomSession`) on the other.

This module only carries records: the broker's HELLO/WELCOME/JOINED/INFO/LEFT become the
session's presence calls, RELAY records become ``on_record``, and the session's
:class:`~cdev.chat.room.Send` actions become broadcast records or DIRECT ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from cdev.chat.framing import (
    ANNOUNCE,
    DIRECT,
    DIRECT_PREFIX,
    ERROR,
    HELLO,
    INFO,
    JOINED,
    LEFT,
    MAX_INFO,
    PROTO,
    RELAY,
    RELAY_PREFIX,
    TYPE_NAMES,
    VERSION,
    WELCOME,
    ProtocolError,
    RecordParser,
    check_hello,
    check_inner,
    decode_json,
    encode,
    encode_json,
    field,
)
from cdev.chat.options import ChatOptions, close_writer
from cdev.chat.room import Announce, Event, Member, RoomSession, Send
from cdev.chat.safe import safe_text
from cdev.chat.twopeer import error_text
from cdev.chat.ui import ChatUI, LineSource
from cdev.errors import EXIT_OK, CdevError
from cdev.transport import Transport

__all__ = ["Event", "RoomClient", "join", "open_room"]


class BrokerClosed(CdevError):
    """The broker ended the connection between records."""


class RoomClient:
    """The protocol side of a room peer, without any terminal I/O (used by tests and benchmarks)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opts: ChatOptions
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.opts = opts
        self.session = RoomSession(
            opts.nick,
            passphrase=opts.passphrase if opts.encrypt else None,
            provider=opts.provider,
        )
        self._parser = RecordParser()
        self._records: collections.deque[tuple[int, bytes]] = collections.deque()
        self._events: collections.deque[Event] = collections.deque()
        self._eof = False
        # After the join a task keeps reading, so sponsoring newcomers never waits for the
        # application; it stops reading (TCP back-pressure) when this many events wait.
        self._inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue(maxsize=1024)
        self._pump_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- what tests, the benchmark and the UI read -----------------------------------------
    @property
    def id(self) -> int:
        return self.session.id

    @property
    def members(self) -> dict[int, Member]:
        return self.session.members

    @property
    def fingerprint(self) -> str | None:
        return self.session.fingerprint

    @property
    def key_fingerprint(self) -> str | None:
        return self.session.key_fingerprint

    # -- the broker's wire -----------------------------------------------------------------
    async def _next(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next record from the broker; TimeoutError after ``timeout`` seconds.

        Reads whole chunks into a parser, so a timeout never splits a record."""
        while not self._records:
            if self._eof:
                if self._parser.pending:
                    raise ProtocolError("connection closed in the middle of a record (truncated)")
                raise BrokerClosed("the broker closed the connection")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            except TimeoutError:
                raise  # an OSError too, but the caller's timer, not a lost connection
            except (ConnectionError, OSError) as exc:
                raise CdevError(f"connection to the broker lost: {exc.strerror or exc}") from None
            if not data:
                self._eof = True
            self._records.extend(self._parser.feed(data))
        return self._records.popleft()

    async def _flush(self) -> None:
        out = []
        for action in self.session.take():
            if isinstance(action, Send):
                if action.to is None:
                    out.append(encode(action.rtype, action.body))
                else:
                    prefix = DIRECT_PREFIX.pack(action.to, action.rtype)
                    out.append(encode(DIRECT, prefix + action.body))
            elif isinstance(action, Announce):
                out.append(encode(ANNOUNCE, action.info.encode()))
            else:
                self._events.append(action)
        if out:
            try:
                self.writer.write(b"".join(out))
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise CdevError(f"connection to the broker lost: {exc.strerror or exc}") from None

    async def _handle(self, rtype: int, body: bytes) -> None:
        """Feed one record to the session and send what it answers, even when it then fails
        (a newcomer's failed confirmation still tells its sponsor)."""
        try:
            self._dispatch(rtype, body)
        except BaseException:
            with contextlib.suppress(CdevError):
                await self._flush()
            raise
        await self._flush()

    def _dispatch(self, rtype: int, body: bytes) -> None:
        session = self.session
        if rtype == RELAY:
            if len(body) < RELAY_PREFIX.size:
                raise ProtocolError("malformed RELAY record")
            sender, inner = RELAY_PREFIX.unpack_from(body)
            payload = body[RELAY_PREFIX.size :]
            check_inner(inner, len(payload))
            session.on_record(sender, inner, payload)
        elif rtype == JOINED:
            m = decode_json(JOINED, body)
            session.on_joined(field(m, "id", int, JOINED), field(m, "nick", str, JOINED), _info(m))
        elif rtype == INFO:
            m = decode_json(INFO, body)
            session.on_info(field(m, "id", int, INFO), _info(m))
        elif rtype == LEFT:
            m = decode_json(LEFT, body)
            reason = m.get("reason")
            session.on_left(field(m, "id", int, LEFT), reason if isinstance(reason, str) else "")
        elif rtype == ERROR:
            raise CdevError(f"broker: {error_text(body)}")
        else:
            raise ProtocolError(f"unexpected {TYPE_NAMES[rtype]} record from the broker")

    async def handshake(self) -> None:
        """Join the room: the broker's hello and member list, then (encrypted) the group."""
        opts = self.opts
        rtype, body = await self._next_or_closed("the broker's HELLO")
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
        }
        self.writer.write(encode_json(HELLO, mine))
        rtype, body = await self._next_or_closed("the broker's WELCOME")
        if rtype == ERROR:
            raise CdevError(f"broker refused: {error_text(body)}")
        if rtype != WELCOME:
            raise ProtocolError(f"expected WELCOME, got {TYPE_NAMES[rtype]}")
        welcome = decode_json(WELCOME, body)
        my_id = field(welcome, "id", int, WELCOME)
        count = field(welcome, "members", int, WELCOME)
        present = []
        for _ in range(count):  # the members already present, one JOINED each
            rtype, body = await self._next_or_closed("the member list")
            if rtype != JOINED:
                raise ProtocolError(f"expected JOINED, got {TYPE_NAMES[rtype]}")
            m = decode_json(JOINED, body)
            present.append((field(m, "id", int, JOINED), field(m, "nick", str, JOINED), _info(m)))
        self.session.on_welcome(my_id, present)
        await self._flush()
        # Encrypted: records flow until a sponsor vouched for us (or we founded the group).
        loop = asyncio.get_running_loop()
        while not self.session.admitted:
            wake = self.session.wakeup
            timeout = None if wake is None else max(0.0, wake - loop.time())
            try:
                rtype, body = await self._next_or_closed("we were admitted", timeout)
            except TimeoutError:
                self.session.on_timer()
                await self._flush()
            else:
                await self._handle(rtype, body)
        # Notices from the join stay queued for receive(); "admitted" is ours alone.
        for ev in self._events:
            if ev.kind != "admitted":
                self._inbox.put_nowait(ev)
        self._events.clear()
        self._pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                rtype, body = await self._next()
                await self._handle(rtype, body)  # answers sponsorship requests at once
                while self._events:
                    await self._inbox.put(self._events.popleft())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to receive(), which raises it
            await self._inbox.put(exc)

    async def _next_or_closed(self, what: str, timeout: float | None = None) -> tuple[int, bytes]:
        try:
            return await self._next(timeout)
        except BrokerClosed:
            raise CdevError(f"broker closed the connection before {what}") from None

    # -- talking ---------------------------------------------------------------------------
    def message_record(self, text: bytes) -> bytes:
        send = self.session.message(text)
        return encode(send.rtype, send.body)

    def goodbye_record(self) -> bytes:
        send = self.session.goodbye()
        return encode(send.rtype, send.body)

    async def send(self, text: bytes) -> None:
        self.writer.write(self.message_record(text))
        await self.writer.drain()

    async def goodbye(self) -> None:
        self.writer.write(self.goodbye_record())
        await self.writer.drain()

    async def receive(self) -> Event:
        """The next event; CdevError when the broker closes or a record fails its checks."""
        if self._failure is not None:
            raise self._failure
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            self._failure = item
            raise item
        return item

    async def detach(self) -> bytes:
        """Stop reading (a benchmark then reads the socket itself); returns the bytes read
        but not handled yet, which come first."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(BaseException):
                await self._pump_task
            self._pump_task = None
        records = b"".join(encode(t, b) for t, b in self._records)
        self._records.clear()
        return records + self._parser.take_pending()

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(BaseException):
                await self._pump_task
        self.session.close()
        await close_writer(self.writer)


def _info(m: dict[str, Any]) -> str:
    info = m.get("info", "")
    return info if isinstance(info, str) and len(info) <= MAX_INFO else ""


async def open_room(
    transport: Transport,
    address: str,
    opts: ChatOptions,
    client_cls: type[RoomClient] = RoomClient,
) -> RoomClient:
    """Connect and be admitted; ``client_cls`` is the broker's client or a carrier's."""
    reader, writer = await transport.connect(address, opts.connect_timeout)
    client = client_cls(reader, writer, opts)
    try:
        async with asyncio.timeout(opts.handshake_timeout):
            await client.handshake()
    except TimeoutError:
        await client.close()
        why = client.session.last_refusal
        raise CdevError(
            f"not admitted to the room at {address} within {opts.handshake_timeout:g} s"
            + (f" ({why})" if why else "")
        ) from None
    except BaseException:
        await client.close()
        raise
    return client


async def join(
    transport: Transport,
    address: str,
    opts: ChatOptions,
    ui: ChatUI,
    client_cls: type[RoomClient] = RoomClient,
) -> int:
    """``cdev chat join``: through a broker, or a bus with ``client_cls`` its own client."""
    client = await open_room(transport, address, opts, client_cls)
    if client.fingerprint:
        ui.notice(f"group fingerprint {client.fingerprint} (the same for every member)")
        ui.notice(f"your key fingerprint {client.key_fingerprint}")
    names = ", ".join(_who(m) for m in client.members.values()) or "nobody else yet"
    ui.notice(f"joined as {opts.nick}; in the room: {names}")
    lines = LineSource()

    async def pump_out() -> None:
        while (line := await lines.get()) is not None:
            await client.send(line)
        await client.goodbye()

    async def pump_in() -> None:
        while True:
            ev = await client.receive()
            nick = safe_text(ev.nick)
            if ev.kind == "message":
                ui.message(nick, ev.text)
            elif ev.kind == "joined":
                key = f", key {ev.fingerprint}" if ev.fingerprint else ""
                ui.notice(f"{nick} joined{key}")
            elif ev.kind == "left":
                ui.notice(f"{nick} left ({safe_text(ev.text.decode('utf-8', 'replace'))})")
            elif ev.kind == "notice":
                ui.notice(safe_text(ev.text.decode("utf-8", "replace")))
            elif ev.kind == "gap":  # only from an at-most-once bus
                ui.notice(f"{ev.text.decode()} message(s) from {nick} lost on the bus")

    out_task = asyncio.create_task(pump_out())
    in_task = asyncio.create_task(pump_in())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:
            in_task.result()  # always an error: the room never ends on its own
        try:
            out_task.result()
        except (ConnectionError, OSError) as exc:
            raise CdevError(f"connection to the room lost: {exc.strerror or exc}") from None
        return EXIT_OK
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await client.close()


def _who(m: Member) -> str:
    return f"{safe_text(m.nick)} ({m.fingerprint})" if m.fingerprint else safe_text(m.nick)

"""Two-peer chat, as in the seed's server and client: one side listens, the other connects,
and both read their input and the connection at the same time."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from dataclasses import dataclass
from typing import Any

from cdev.chat import crypto
from cdev.chat.framing import (
    CONFIRM,
    DATA,
    ERROR,
    GOODBYE,
    HELLO,
    PROTO,
    TYPE_NAMES,
    VERSION,
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
from cdev.chat.limits import HandshakeLimiter
from cdev.chat.options import ChatOptions, close_writer
from cdev.chat.pake import MESSAGE_SIZE, Pake
from cdev.chat.safe import safe_text
from cdev.chat.ui import ChatUI, LineSource
from cdev.errors import EXIT_OK, CdevError, IntegrityError
from cdev.transport import Transport, peer_label, peer_source

LISTEN = "listen"
CONNECT = "connect"


PAKE_IDS = (b"cdev-chat v2 listen", b"cdev-chat v2 connect")
MAX_HANDSHAKES = 16  # handshakes a listener runs at once, from all sources together


class HandshakeRejected(CdevError):
    """The peer is a real cdev peer but cannot talk to us (passphrase, mode)."""


@dataclass
class Link:
    """An established two-peer connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer_nick: str
    sealer: crypto.Sealer | None = None
    opener: crypto.Opener | None = None
    fingerprint: str | None = None

    async def _write(self, record: bytes) -> None:
        try:
            self.writer.write(record)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise PeerClosed(f"connection lost: {exc.strerror or exc}") from None

    async def send(self, text: bytes) -> None:
        body = self.sealer.seal(DATA, text) if self.sealer else text
        await self._write(encode(DATA, body))

    async def goodbye(self) -> None:
        body = self.sealer.seal(GOODBYE, b"") if self.sealer else b""
        await self._write(encode(GOODBYE, body))

    async def receive(self) -> bytes | None:
        """The next message text, or None when the peer said goodbye."""
        rtype, body = await read_record(self.reader)
        if rtype == DATA:
            return self.opener.open(DATA, body) if self.opener else body
        if rtype == GOODBYE:
            if self.opener:
                self.opener.open(GOODBYE, body)  # a forged goodbye would hide truncation
            return None
        if rtype == ERROR:
            raise CdevError(f"peer reported an error: {error_text(body)}")
        raise ProtocolError(f"unexpected {TYPE_NAMES[rtype]} record from peer")

    async def close(self) -> None:
        for part in (self.sealer, self.opener):
            if part is not None:
                part.close()
        await close_writer(self.writer)


def error_text(body: bytes) -> str:
    """A peer's ERROR text, made safe for a terminal."""
    try:
        obj = decode_json(ERROR, body)
        return safe_text(str(field(obj, "message", str, ERROR)), 200)
    except ProtocolError:
        return "(unreadable error record)"


async def _reject(writer: asyncio.StreamWriter, message: str) -> None:
    with contextlib.suppress(Exception):
        writer.write(encode_json(ERROR, {"message": message}))
        await asyncio.wait_for(writer.drain(), 1)


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, opts: ChatOptions
) -> Link:
    """Hello exchange (with SPAKE2 messages when encrypted), then key confirmation."""
    peer_role = CONNECT if role == LISTEN else LISTEN
    hello: dict[str, Any] = {
        "proto": PROTO,
        "version": VERSION,
        "role": role,
        "nick": opts.nick,
        "mode": opts.mode,
    }
    pake: Pake | None = None
    if opts.encrypt:
        assert opts.passphrase is not None
        pake = Pake(opts.passphrase, role == LISTEN, *PAKE_IDS)
        hello["pake"] = pake.message.hex()
    mine = encode_json(HELLO, hello)
    writer.write(mine)
    async with asyncio.timeout(opts.handshake_timeout):
        try:
            await writer.drain()
            rtype, body = await read_record(reader)
        except PeerClosed:
            raise ProtocolError("peer closed the connection during the handshake") from None
        if rtype == ERROR:
            raise HandshakeRejected(f"peer refused the chat: {error_text(body)}")
        if rtype != HELLO:
            raise ProtocolError(f"expected HELLO, got {TYPE_NAMES[rtype]}")
        theirs = decode_json(HELLO, body)
        check_hello(theirs)
        if theirs.get("role") != peer_role:
            got = safe_text(repr(theirs.get("role")), 40)
            raise ProtocolError(f"peer is not a '{peer_role}' side (role {got})")
        nick = safe_text(field(theirs, "nick", str, HELLO), 32)
        mode = theirs.get("mode")
        if mode != opts.mode:
            msg = (
                "peer wants an encrypted chat: add --encrypt"
                if mode == "encrypted"
                else "peer is not encrypting: both sides need --encrypt"
            )
            await _reject(writer, f"mode mismatch (this side is {opts.mode})")
            raise HandshakeRejected(msg)
        link = Link(reader, writer, nick)
        if not opts.encrypt:
            return link
        assert opts.provider is not None and pake is not None
        # One guess per connection: the peer's element is used once, with this run's secret.
        shared = pake.finish(hex_field(theirs, "pake", MESSAGE_SIZE, HELLO))
        lbody, cbody = (mine[4:], body) if role == LISTEN else (body, mine[4:])
        context = crypto.transcript(lbody, cbody)
        master = crypto.derive(shared, "master", context)

        def keys(direction: str) -> tuple[bytes, bytes]:
            return (
                crypto.derive(master, f"enc {direction}", context),
                crypto.derive(master, f"mac {direction}", context),
            )

        link.sealer = crypto.Sealer(opts.provider, *keys(f"{role}>{peer_role}"))
        try:
            link.opener = crypto.Opener(opts.provider, *keys(f"{peer_role}>{role}"), who="peer")
            link.fingerprint = crypto.fingerprint(master, context)
            await _confirm(link, role, peer_role, context)
        except BaseException:
            await link.close()  # the provider's sessions too
            raise
        return link


async def _confirm(link: Link, role: str, peer_role: str, context: bytes) -> None:
    """Key confirmation. Both sides send theirs before reading the other's, so both learn of
    a wrong passphrase at the same step. With a PAKE this is safe: a confirmation only lets a
    peer test the one passphrase it committed to in its PAKE message."""
    assert link.sealer is not None and link.opener is not None
    label = crypto.LABEL + b"confirm\0"
    link.writer.write(encode(CONFIRM, link.sealer.mac(label + role.encode() + context)))
    await link.writer.drain()
    try:
        rtype, body = await read_record(link.reader)
    except PeerClosed:
        raise HandshakeRejected(
            "peer closed the connection during key confirmation (wrong passphrase?)"
        ) from None
    if rtype == ERROR:
        raise HandshakeRejected(f"peer refused the chat: {error_text(body)}")
    if rtype != CONFIRM:
        raise ProtocolError(f"expected CONFIRM, got {TYPE_NAMES[rtype]}")
    if not hmac.compare_digest(body, link.opener.mac(label + peer_role.encode() + context)):
        await _reject(link.writer, "key confirmation failed: wrong passphrase")
        raise HandshakeRejected(
            "wrong passphrase: key confirmation with the peer failed (no message exchanged)"
        )


async def converse(link: Link, ui: ChatUI, lines: LineSource) -> int:
    """Run the chat until both sides said goodbye (pipe mode) or either did (terminal)."""
    if link.fingerprint:
        ui.notice(f"session fingerprint {link.fingerprint} (compare it with your peer)")
    ui.notice(f"connected to {link.peer_nick}")
    state = {"our_goodbye": False}

    async def pump_out() -> None:
        while (line := await lines.get()) is not None:
            await link.send(line)
        await link.goodbye()
        state["our_goodbye"] = True

    async def pump_in() -> None:
        while (text := await link.receive()) is not None:
            ui.message(None if not ui.interactive else link.peer_nick, text)

    out_task = asyncio.create_task(pump_out())
    in_task = asyncio.create_task(pump_in())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:
            in_task.result()  # raises integrity/protocol/closed errors
            ui.notice(f"{link.peer_nick} said goodbye")
            if ui.interactive:
                out_task.cancel()
            else:
                # Keep sending our input (the peer reads until our goodbye) unless the
                # connection goes away first.
                closed = asyncio.create_task(_wait_eof(link.reader))
                done, _ = await asyncio.wait(
                    {out_task, closed}, return_when=asyncio.FIRST_COMPLETED
                )
                closed.cancel()
                if out_task in done:
                    with contextlib.suppress(PeerClosed):
                        out_task.result()
                else:
                    out_task.cancel()
            if not state["our_goodbye"]:
                with contextlib.suppress(CdevError):
                    await link.goodbye()
            return EXIT_OK
        out_task.result()
        if not ui.interactive:
            await in_task  # the peer may still be talking: read until its goodbye
            ui.notice(f"{link.peer_nick} said goodbye")
        return EXIT_OK
    except PeerClosed as exc:
        raise CdevError(
            f"{exc}: {link.peer_nick} left without goodbye (messages may be lost)"
        ) from None
    except IntegrityError:
        await _reject(link.writer, "integrity failure: closing")
        raise
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await link.close()


async def _wait_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass


async def listen(
    transport: Transport,
    address: str,
    opts: ChatOptions,
    ui: ChatUI,
    limiter: HandshakeLimiter | None = None,
) -> int:
    """Wait for one peer. A connection whose handshake fails (silence, wrong passphrase,
    other mode, garbage) is dropped and we keep waiting; handshakes are rate-limited per
    source so nobody can guess quickly or make us burn CPU."""
    chosen: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
    limiter = limiter or HandshakeLimiter()
    running = 0
    refused_noted: dict[str, float] = {}

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal running
        peer = peer_label(writer)
        if chosen.done():
            await _reject(writer, "busy: this listener already has a peer")
            await close_writer(writer)
            return
        source = peer_source(writer)
        if running >= MAX_HANDSHAKES or not limiter.allow(source):
            await _reject(writer, "too many handshakes from your address: try again later")
            await close_writer(writer)
            now = asyncio.get_running_loop().time()
            if now - refused_noted.get(source, -60.0) >= 10:  # one notice per source per 10 s
                refused_noted[source] = now
                ui.notice(f"refused {peer}: too many handshakes from {source}")
            return
        running += 1
        try:
            link = await handshake(reader, writer, LISTEN, opts)
        except TimeoutError:
            ui.notice(f"dropped {peer}: no handshake within {opts.handshake_timeout:g} s")
            await close_writer(writer)
            return
        except CdevError as exc:
            ui.notice(f"dropped {peer}: {safe_text(str(exc), 300)}")
            await close_writer(writer)
            return
        finally:
            running -= 1
        if chosen.done():
            await _reject(writer, "busy: this listener already has a peer")
            await link.close()
            return
        chosen.set_result(link)

    server = await transport.serve(address, on_connection)
    ui.notice(f"listening on {address}")
    try:
        link = await chosen
    finally:
        server.close()  # one peer only: stop accepting
    return await converse(link, ui, LineSource())


async def connect(transport: Transport, address: str, opts: ChatOptions, ui: ChatUI) -> int:
    reader, writer = await transport.connect(address, opts.connect_timeout)
    try:
        link = await handshake(reader, writer, CONNECT, opts)
    except TimeoutError:
        await close_writer(writer)
        raise CdevError(
            f"no handshake from {address} within {opts.handshake_timeout:g} s"
        ) from None
    except BaseException:
        await close_writer(writer)
        raise
    return await converse(link, ui, LineSource())

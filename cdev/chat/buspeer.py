"""The member side of a bus room: the room client, told about what the bus lost.

A broker relays every record or drops the connection, so the room session treats a skipped
sequence number as an attack. A bus such as core NATS is at-most-once: when a server dies,
records in flight are gone. Here a forward jump in a member's sequence number, on a record
whose MAC and signature verified (so the number is the sender's own), is reported as a gap of
that many messages, never hidden; everything else — a forged, replayed, duplicated or
reordered record — is refused exactly as with the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cdev.chat import crypto
from cdev.chat.client import RoomClient, _who
from cdev.chat.options import ChatOptions
from cdev.chat.room import Member, RoomSession
from cdev.chat.safe import safe_text
from cdev.chat.ui import ChatUI, LineSource
from cdev.errors import EXIT_OK, CdevError, IntegrityError
from cdev.transport import Transport


class GapSession(RoomSession):
    """A RoomSession that accepts an authenticated jump forward and reports it as a ``gap``
    event (text: the number of messages lost) just before the record that revealed it."""

    def _open(self, member: Member, rtype: int, body: bytes) -> bytes | None:
        if len(body) >= crypto.MIN_SEALED + crypto.SIG_SIZE:
            (seq,) = crypto.SEQ.unpack_from(body)
            before = member.expected
            if seq > before and seq >= member.start:
                member.expected = seq  # MAC and signature are still checked below
                try:
                    text = super()._open(member, rtype, body)
                except IntegrityError:
                    member.expected = before
                    raise
                self._event("gap", member.nick, str(seq - before), member.fingerprint)
                return text
        return super()._open(member, rtype, body)


class BusRoomClient(RoomClient):
    """The broker's RoomClient with a :class:`GapSession`: the same protocol code otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.opts
        self.session.close()
        self.session = GapSession(
            opts.nick,
            passphrase=opts.passphrase if opts.encrypt else None,
            provider=opts.provider,
        )


async def open_bus_room(transport: Transport, address: str, opts: ChatOptions) -> BusRoomClient:
    reader, writer = await transport.connect(address, opts.connect_timeout)
    client = BusRoomClient(reader, writer, opts)
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


async def bus_join(transport: Transport, address: str, opts: ChatOptions, ui: ChatUI) -> int:
    """``cdev chat join`` for a bus room: as with a broker, plus gap notices."""
    client = await open_bus_room(transport, address, opts)
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
            elif ev.kind == "gap":
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

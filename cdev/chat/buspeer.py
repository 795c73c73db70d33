"""The member side of a bus room: the room client, told about what the bus lost.

A broker relays every record or drops the connection, so the room client treats a skipped
sequence number as an attack. A bus such as core NATS is at-most-once: when a server dies,
records in flight are gone. Here a forward jump in a sender's sequence number, on a record
whose MAC verified (so the number is the sender's own), is reported as a gap of that many
messages, never hidden; everything else — a forged, replayed, duplicated or reordered record
— is refused exactly as with the broker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from cdev.chat import crypto
from cdev.chat.client import Event, Member, RoomClient, sender_keys
from cdev.chat.options import ChatOptions
from cdev.chat.ui import ChatUI, LineSource
from cdev.errors import EXIT_OK, CdevError, IntegrityError
from cdev.transport import Transport


class GapOpener(crypto.Opener):
    """An Opener that accepts an authenticated jump forward and counts what was skipped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = 0

    def open(self, rtype: int, body: bytes) -> bytes:
        if len(body) >= crypto.MIN_SEALED:
            (seq,) = crypto.SEQ.unpack_from(body)
            if seq > self.expected:
                before = self.expected
                self.expected = seq  # the MAC check below still covers seq
                try:
                    text = super().open(rtype, body)
                except IntegrityError:
                    self.expected = before
                    raise
                self.lost += seq - before
                return text
        return super().open(rtype, body)


class BusRoomClient(RoomClient):
    """RoomClient whose receivers report lost records as ``gap`` events (text: the count)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base: dict[int, int] = {}
        self._stash: deque[Event] = deque()

    def _add(self, m: dict[str, Any], rtype: int) -> Member:
        member = super()._add(m, rtype)
        seq = m.get("seq")
        # Where the member's numbering stood when it was announced (0 for a new member).
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 1 << 63:
            self._base[member.id] = seq
        return member

    def _opener(self, member: Member) -> crypto.Opener:
        if member.opener is None:
            assert self.room_key is not None and self.opts.provider is not None
            enc, mac = sender_keys(self.room_key, member.nonce, member.nick)
            opener = GapOpener(self.opts.provider, enc, mac, who=member.nick)
            opener.expected = self._base.pop(member.id, 0)
            member.opener = opener
        return member.opener

    async def receive(self) -> Event:
        if self._stash:
            return self._stash.popleft()
        ev = await super().receive()
        if ev.kind in ("message", "goodbye"):
            for m in self.members.values():
                if m.nick == ev.nick and isinstance(m.opener, GapOpener) and m.opener.lost:
                    lost, m.opener.lost = m.opener.lost, 0
                    self._stash.append(ev)
                    return Event("gap", ev.nick, str(lost).encode())
        return ev


async def open_bus_room(
    transport: Transport, address: str, opts: ChatOptions, room_key: bytes | None = None
) -> BusRoomClient:
    reader, writer = await transport.connect(address, opts.connect_timeout)
    client = BusRoomClient(reader, writer, opts)
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


async def bus_join(transport: Transport, address: str, opts: ChatOptions, ui: ChatUI) -> int:
    """``cdev chat join`` for a bus room: as with a broker, plus gap notices."""
    client = await open_bus_room(transport, address, opts)
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
            elif ev.kind == "gap":
                ui.notice(f"{ev.text.decode()} message(s) from {ev.nick} lost on the bus")

    out_task = asyncio.create_task(pump_out())
    in_task = asyncio.create_task(pump_in())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:
            in_task.result()
        try:
            out_task.result()
        except (ConnectionError, OSError) as exc:
            raise CdevError(f"connection to the room lost: {exc.strerror or exc}") from None
        return EXIT_OK
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await client.close()

"""The member side of a bus room: the room client, told about what the bus lost.

A broker relays every record or drops the connection, so the room session treats a skipped
sequence number as an attack. A bus such as core NATS is at-most-once: when a server dies,
records in flight are gone. Here a forward jump in a member's sequence number, on a record
whose MAC and signature verified (so the number is the sender's own), is reported as a gap of
that many messages, never hidden; everything else — a forged, replayed, duplicated or
reordered record — is refused exactly as with the broker.
"""

from __future__ import annotations

from typing import Any

from cdev.chat import crypto
from cdev.chat.client import RoomClient, join, open_room
from cdev.chat.options import ChatOptions
from cdev.chat.room import Member, RoomSession
from cdev.chat.ui import ChatUI
from cdev.errors import IntegrityError
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
    client = await open_room(transport, address, opts, BusRoomClient)
    assert isinstance(client, BusRoomClient)
    return client


async def bus_join(transport: Transport, address: str, opts: ChatOptions, ui: ChatUI) -> int:
    """``cdev chat join`` for a bus room: as with a broker, plus gap notices."""
    return await join(transport, address, opts, ui, BusRoomClient)

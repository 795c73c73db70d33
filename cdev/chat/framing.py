"""Records on the wire: a 4-byte header (type, flags, length) and a bounded body.

TCP keeps no message boundaries, so every record carries its length; the maximum size is
checked before anything is buffered, so a hostile peer cannot make us allocate more.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from cdev.errors import CdevError

VERSION = 2  # 2: PAKE handshakes, signed room records (docs/chat-protocol.md)
PROTO = "cdev-chat"

HEADER = struct.Struct("!BBH")  # type, flags (must be 0), body length
HEADER_SIZE = HEADER.size
MAX_BODY = 16384  # leaves room for MAX_TEXT plus IV, padding, MAC and relay prefix
MAX_TEXT = 8192  # longest message text in bytes; longer input lines are split
MAX_CONTROL = 4096  # JSON control records are small; refuse anything bigger

# Record types (docs/chat-protocol.md).
HELLO = 1
WELCOME = 2
CONFIRM = 3
DATA = 4
RELAY = 5
JOINED = 6
LEFT = 7
GOODBYE = 8
ERROR = 9
# Rooms (version 2): a member's messages to the broker (or bus) ...
DIRECT = 10  # to one member: BE32 member id, inner type (u8), inner body
ANNOUNCE = 11  # the member's public info (its group id), kept by the broker
# ... the broker's membership news ...
INFO = 12  # JSON {"id", "info"}: a member announced new info
# ... and member-to-member records, relayed without being read (room.py).
VOUCH = 13  # sealed and signed: a sponsor admits a newcomer to its group
JOIN_REQ = 14  # JSON, newcomer -> sponsor: nick, signing key, nonce, PAKE message
JOIN_ACK = 15  # JSON, sponsor -> newcomer: PAKE message, confirmation, sealed group key
ROSTER = 16  # sealed, sponsor -> newcomer: the group's members and their keys
JOIN_FIN = 17  # JSON, newcomer -> sponsor: the newcomer's confirmation
JOIN_NAK = 18  # JSON, sponsor -> newcomer: the sponsor will not run a join now
KEYS = 19  # sealed and signed: the member keys a newcomer was given, for everyone to check
TYPE_NAMES = {
    HELLO: "HELLO",
    WELCOME: "WELCOME",
    CONFIRM: "CONFIRM",
    DATA: "DATA",
    RELAY: "RELAY",
    JOINED: "JOINED",
    LEFT: "LEFT",
    GOODBYE: "GOODBYE",
    ERROR: "ERROR",
    DIRECT: "DIRECT",
    ANNOUNCE: "ANNOUNCE",
    INFO: "INFO",
    VOUCH: "VOUCH",
    JOIN_REQ: "JOIN_REQ",
    JOIN_ACK: "JOIN_ACK",
    ROSTER: "ROSTER",
    JOIN_FIN: "JOIN_FIN",
    JOIN_NAK: "JOIN_NAK",
    KEYS: "KEYS",
}
CONTROL_TYPES = frozenset(
    {HELLO, WELCOME, JOINED, LEFT, ERROR, ANNOUNCE, INFO, JOIN_REQ, JOIN_ACK, JOIN_FIN, JOIN_NAK}
)
# Member-to-member types a broker relays to every other member, and to one member.
BROADCAST_TYPES = frozenset({DATA, GOODBYE, VOUCH, KEYS})
DIRECT_TYPES = frozenset({JOIN_REQ, JOIN_ACK, ROSTER, JOIN_FIN, JOIN_NAK})
MAX_INFO = 64  # bytes of a member's ANNOUNCE info (printable ASCII)

# RELAY body prefix: broker-assigned sender id, original record type; DIRECT: recipient, type.
RELAY_PREFIX = struct.Struct("!IB")
DIRECT_PREFIX = RELAY_PREFIX


class ProtocolError(CdevError):
    """The peer broke the wire protocol (malformed, oversize or unexpected record)."""


class PeerClosed(CdevError):
    """The connection ended where a record was expected."""


def encode(rtype: int, body: bytes = b"") -> bytes:
    if len(body) > MAX_BODY:
        raise ProtocolError(f"record of {len(body)} bytes exceeds the maximum of {MAX_BODY}")
    return HEADER.pack(rtype, 0, len(body)) + body


def encode_json(rtype: int, obj: dict[str, Any]) -> bytes:
    return encode(rtype, json.dumps(obj, separators=(",", ":")).encode())


def check_header(rtype: int, flags: int, length: int) -> None:
    """The limits of docs/chat-protocol.md, on a header, before its body is read."""
    if rtype not in TYPE_NAMES:
        raise ProtocolError(f"malformed record: unknown type {rtype}")
    if flags:
        raise ProtocolError(f"malformed record: reserved flags {flags:#x} set")
    if length > MAX_BODY:
        raise ProtocolError(f"oversize record: {length} bytes (maximum {MAX_BODY})")
    if rtype in CONTROL_TYPES and length > MAX_CONTROL:
        raise ProtocolError(f"oversize {TYPE_NAMES[rtype]} record: {length} bytes")


async def read_record(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next record; PeerClosed on a clean EOF between records."""
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed in the middle of a record header") from None
        raise PeerClosed("connection closed by peer") from None
    except (ConnectionError, OSError) as exc:
        raise PeerClosed(f"connection lost: {exc.strerror or exc}") from None
    rtype, flags, length = HEADER.unpack(header)
    check_header(rtype, flags, length)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed in the middle of a record (truncated)") from None
    except (ConnectionError, OSError) as exc:
        raise PeerClosed(f"connection lost: {exc.strerror or exc}") from None
    return rtype, body


def decode_json(rtype: int, body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: RecursionError
        raise ProtocolError(f"malformed {TYPE_NAMES.get(rtype, rtype)} record") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed {TYPE_NAMES.get(rtype, rtype)} record")
    return obj


def field(obj: dict[str, Any], name: str, kind: type, rtype: int) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"malformed {TYPE_NAMES.get(rtype, rtype)} record: bad {name!r}")
    return value


def hex_field(obj: dict[str, Any], name: str, size: int, rtype: int) -> bytes:
    text = field(obj, name, str, rtype)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != size:
        raise ProtocolError(f"malformed {TYPE_NAMES.get(rtype, rtype)} record: bad {name!r}")
    return value


def check_inner(rtype: int, length: int) -> None:
    """Limits of a record carried inside RELAY or DIRECT (it is never read on its own)."""
    if rtype not in BROADCAST_TYPES and rtype not in DIRECT_TYPES:
        raise ProtocolError(f"malformed record: type {rtype} cannot be relayed")
    if rtype in CONTROL_TYPES and length > MAX_CONTROL:
        raise ProtocolError(f"oversize {TYPE_NAMES[rtype]} record: {length} bytes")


def check_hello(obj: dict[str, Any]) -> None:
    if obj.get("proto") != PROTO:
        raise ProtocolError("the peer does not speak the cdev chat protocol")
    version = obj.get("version")
    if version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this cdev speaks {VERSION})"
        )


class RecordParser:
    """Incremental parser for the broker's callback-based connections."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            rtype, flags, length = unpack(buf, pos)
            if flags or length > MAX_CONTROL or rtype not in TYPE_NAMES:
                check_header(rtype, flags, length)  # the slow path: raises if it must
            if end - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            out.append((rtype, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    def take_pending(self) -> bytes:
        """The bytes of an incomplete record (for a reader that takes the stream over)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

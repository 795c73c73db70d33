"""Property-based fuzzing of everything that parses chat records from a peer, broker or bus.

The only exceptions allowed are the documented ones (:class:`cdev.errors.CdevError` and its
subclasses ProtocolError, PeerClosed, IntegrityError); anything else is a crash. CI runs a few
hundred examples per target; ``CDEV_FUZZ_EXAMPLES=1000000`` runs the by-hand budget recorded in
docs/chat-protocol.md (protocol-aware inputs a tenth of it, room members a hundredth: they cost
more per example).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdev.chat import framing
from cdev.chat.client import RoomClient
from cdev.chat.framing import (
    HEADER,
    MAX_BODY,
    MAX_CONTROL,
    TYPE_NAMES,
    PeerClosed,
    ProtocolError,
    RecordParser,
    read_record,
)
from cdev.chat.room import RoomSession
from cdev.chat.safe import safe_text
from cdev.errors import CdevError
from cdev.plugins import get_registry

EXAMPLES = int(os.environ.get("CDEV_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
FUZZ_AWARE = settings(FUZZ, max_examples=max(EXAMPLES // 10, 300))
MUTATIONS = int(os.environ.get("CDEV_FUZZ_MUTATIONS", "20"))  # inputs per mutation example
FUZZ_ROOM = settings(FUZZ, max_examples=max(EXAMPLES // 100, 50))
PROVIDER = get_registry().open_provider("software")

# Protocol-aware inputs: real headers (any type, flags, length) with bodies that are valid,
# truncated, padded or random, and JSON bodies of the real records with one field mutated.
TEMPLATES = [
    {"proto": "cdev-chat", "version": 2, "role": "join", "nick": "bob", "mode": "encrypted"},
    {"proto": "cdev-chat", "version": 2, "role": "listen", "nick": "l", "mode": "encrypted",
     "pake": "42" + "00" * 32},
    {"id": 3, "nick": "alice", "members": 2},
    {"id": 3, "nick": "alice", "info": "g=" + "ab" * 16},
    {"id": 3, "nick": "alice", "reason": "goodbye"},
    {"message": "no"},
    {"nick": "n", "key": "11" * 32, "nonce": "22" * 16, "pake": "41" + "33" * 32},
    {"nonce": "22" * 16, "pake": "42" + "33" * 32, "confirm": "44" * 32, "welcome": "55" * 104},
    {"confirm": "44" * 32},
]  # fmt: skip
FIELDS = ["", "proto", "version", "role", "nick", "mode", "pake", "id", "members", "info",
          "reason", "message", "nonce", "key", "confirm", "welcome"]  # fmt: skip
ODD_VALUES = [None, True, -1, 2**64, 1e308, "", "\x1b[2J", "é" * 40, [], {}, [[[[]]]], "zz", 3]
json_bodies = st.builds(
    lambda t, k, v: json.dumps({**t, k: v} if k else t).encode(),
    st.sampled_from(TEMPLATES),
    st.sampled_from(FIELDS),
    st.sampled_from(ODD_VALUES),
)
deep = st.sampled_from([b"[" * 3000, b'{"a":' * 1000, b"[" * 3000 + b"]" * 3000])
bodies = st.one_of(st.binary(max_size=200), json_bodies, deep)
types = st.one_of(st.sampled_from(sorted(TYPE_NAMES)), st.integers(0, 255))
lengths = st.sampled_from([MAX_CONTROL, MAX_CONTROL + 1, MAX_BODY, MAX_BODY + 1, 0xFFFF, 0, 5])


@st.composite
def records(draw: st.DrawFn) -> bytes:
    rtype = draw(types)
    body = draw(bodies)
    if rtype in (framing.RELAY, framing.DIRECT) and draw(st.booleans()):
        body = struct.pack("!IB", draw(st.integers(0, 5)), draw(types)) + body
    flags = draw(st.sampled_from([0, 0, 0, 1, 0x80]))
    length = len(body) if draw(st.booleans()) else draw(lengths)
    return HEADER.pack(rtype, flags, length) + body


streams = st.one_of(st.binary(max_size=600), st.lists(records(), max_size=4).map(b"".join))
LOOP = asyncio.new_event_loop()  # one loop for all examples: starting one costs more


async def _read_all(data: bytes) -> None:
    reader = asyncio.StreamReader(loop=LOOP)
    reader.feed_data(data)
    reader.feed_eof()
    while True:
        await read_record(reader)


def _parse_body(rtype: int, body: bytes) -> None:
    """What receivers do with a record's body before acting on it."""
    if rtype in framing.CONTROL_TYPES:
        obj = framing.decode_json(rtype, body)
        if rtype == framing.HELLO:
            framing.check_hello(obj)
        for name, kind in (("id", int), ("nick", str), ("message", str)):
            with contextlib.suppress(ProtocolError):
                framing.field(obj, name, kind, rtype)
        with contextlib.suppress(ProtocolError):
            framing.hex_field(obj, "nonce", 16, rtype)
    elif rtype in (framing.RELAY, framing.DIRECT) and len(body) >= framing.RELAY_PREFIX.size:
        _, inner = framing.RELAY_PREFIX.unpack_from(body)
        framing.check_inner(inner, len(body) - framing.RELAY_PREFIX.size)


def _feed(data: bytes, step: int) -> None:
    parser = RecordParser()
    got: list[tuple[int, bytes]] = []
    try:
        for i in range(0, len(data), step):
            got += parser.feed(data[i : i + step])
            assert parser.pending < framing.HEADER_SIZE + MAX_BODY  # never hoards more
    except ProtocolError:
        pass
    for rtype, body in got:
        assert rtype in TYPE_NAMES and len(body) <= MAX_BODY
        if rtype in framing.CONTROL_TYPES:
            assert len(body) <= MAX_CONTROL
        with contextlib.suppress(ProtocolError):
            _parse_body(rtype, body)


@FUZZ
@given(st.binary(max_size=600), st.integers(1, 64))
def test_record_parser(data: bytes, step: int) -> None:
    """The incremental record parser (broker, room members) and the body checks every
    receiver applies, on any bytes in any chunking. The cheapest target: the by-hand run
    gives it the full budget."""
    _feed(data, step)


@FUZZ_AWARE
@given(streams, st.integers(1, 64))
def test_record_parser_protocol_aware(data: bytes, step: int) -> None:
    """Real headers with mutated fields and bodies, through both parsers (the stream-based
    one is what two peers use)."""
    _feed(data, step)
    with contextlib.suppress(ProtocolError, PeerClosed):
        LOOP.run_until_complete(_read_all(data))


INTERESTING = [0, 1, 4, 5, MAX_CONTROL, MAX_CONTROL + 1, MAX_BODY, MAX_BODY + 1, 0xFFFF]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four edits of the kinds that break parsers: bit flips, random bytes, insertions,
    deletions, duplicated ranges, truncation, and header length fields set to edge values."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        n = len(buf)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            at = rng.randint(0, n)
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:
            at = rng.randrange(n)
            del buf[at : at + rng.randint(1, 16)]
        elif op == 4 and n:
            at = rng.randrange(n)
            buf[at:at] = buf[at : at + rng.randint(1, 32)]
        elif op == 5 and n:
            del buf[rng.randrange(n) :]
        elif n >= 4:
            at = rng.randrange(n - 3)
            struct.pack_into("!H", buf, at + 2, rng.choice(INTERESTING))
    return bytes(buf)


@FUZZ_AWARE
@given(streams, st.integers(0, 2**32))
def test_record_parser_mutations(base: bytes, seed: int) -> None:
    """Mutation fuzzing driven by hypothesis: each example mutates a protocol-aware stream
    MUTATIONS times and runs both parsers on every result (the by-hand million)."""
    rng = random.Random(seed)
    for _ in range(MUTATIONS):
        data = _mutate(rng, base)
        _feed(data, rng.randint(1, 64))
        with contextlib.suppress(ProtocolError, PeerClosed):
            LOOP.run_until_complete(_read_all(data))


def _session(state: str) -> RoomSession:
    """A member without any network: a founder ("admitted"), or a newcomer that asked alice
    to sponsor it ("joining")."""
    s = RoomSession("fuzz", passphrase=b"pw", provider=PROVIDER)
    if state == "admitted":
        s.on_welcome(7, [])
    else:
        s.on_welcome(7, [(3, "alice", "g=" + "ab" * 16)])
    s.take()
    return s


@FUZZ_ROOM
@given(
    st.sampled_from(["admitted", "joining"]),
    st.lists(st.tuples(st.integers(0, 8), types, bodies), max_size=5),
)
def test_room_member_records(state: str, items: list[tuple[int, int, bytes]]) -> None:
    s = _session(state)
    try:
        for sender, rtype, body in items:
            s.on_record(sender, rtype, body)
            for action in s.take():
                assert isinstance(getattr(action, "text", b""), bytes)
    except CdevError:
        pass
    finally:
        s.close()


@FUZZ_ROOM
@given(st.lists(records(), max_size=6))
def test_room_client_dispatch(recs: list[bytes]) -> None:
    """What a broker (or anyone pretending to be one) sends to an admitted member."""
    client = RoomClient.__new__(RoomClient)
    client.session = _session("admitted")
    try:
        for rec in recs:
            for rtype, body in RecordParser().feed(rec):
                client._dispatch(rtype, body)
    except CdevError:
        pass
    finally:
        client.session.close()


@FUZZ
@given(st.text(max_size=200))
def test_safe_text_leaves_nothing_a_terminal_obeys(text: str) -> None:
    out = safe_text(text)
    assert "\x1b" not in out and "\x9b" not in out
    assert all(c.isprintable() for c in out)

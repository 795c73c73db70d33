"""Records and sealing at the byte level: framing limits, tamper/replay/reorder detection."""

from __future__ import annotations

import asyncio

import pytest

from cdev.chat import crypto
from cdev.chat.framing import (
    DATA,
    GOODBYE,
    HEADER,
    HELLO,
    MAX_BODY,
    MAX_CONTROL,
    PeerClosed,
    ProtocolError,
    RecordParser,
    encode,
    read_record,
)
from cdev.errors import IntegrityError
from cdev.plugins import get_registry


async def _read(data: bytes) -> tuple[int, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_record(reader)


def test_roundtrip_and_clean_eof() -> None:
    assert asyncio.run(_read(encode(DATA, b"hi"))) == (DATA, b"hi")
    with pytest.raises(PeerClosed):
        asyncio.run(_read(b""))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (HEADER.pack(DATA, 0, MAX_BODY + 1), "oversize record"),
        (HEADER.pack(HELLO, 0, MAX_CONTROL + 1), "oversize HELLO"),
        (HEADER.pack(DATA, 1, 0), "reserved flags"),
        (HEADER.pack(99, 0, 0), "unknown type"),
        (HEADER.pack(DATA, 0, 10) + b"short", "truncated"),
        (b"\x04\x00", "middle of a record header"),
    ],
)
def test_malformed_records(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        asyncio.run(_read(raw))


def test_encode_refuses_oversize() -> None:
    with pytest.raises(ProtocolError):
        encode(DATA, bytes(MAX_BODY + 1))


def test_incremental_parser_handles_any_split() -> None:
    stream = b"".join(encode(DATA, bytes([i]) * i) for i in range(40))
    for step in (1, 3, 7, 64):
        p = RecordParser()
        out = []
        for i in range(0, len(stream), step):
            out += p.feed(stream[i : i + step])
        assert out == [(DATA, bytes([i]) * i) for i in range(40)]
        assert p.pending == 0
    with pytest.raises(ProtocolError, match="oversize"):
        RecordParser().feed(HEADER.pack(DATA, 0, MAX_BODY + 1))


def _pair() -> tuple[crypto.Sealer, crypto.Opener]:
    prov = get_registry().open_provider("software")
    enc, mac = bytes(range(32)), bytes(range(32, 64))
    return crypto.Sealer(prov, enc, mac), crypto.Opener(prov, enc, mac, who="alice")


def test_seal_open_roundtrip_with_fresh_ivs() -> None:
    s, o = _pair()
    a, b = s.seal(DATA, b"same"), s.seal(DATA, b"same")
    assert a[8:24] != b[8:24]  # a fresh random IV per message
    assert o.open(DATA, a) == b"same" and o.open(DATA, b) == b"same"
    assert o.open(GOODBYE, s.seal(GOODBYE, b"")) == b""


def test_tampered_record_is_rejected() -> None:
    s, o = _pair()
    rec = bytearray(s.seal(DATA, b"pay alice 10"))
    rec[30] ^= 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        o.open(DATA, bytes(rec))


def test_record_type_is_under_the_mac() -> None:
    s, o = _pair()
    with pytest.raises(IntegrityError, match="failed authentication"):
        o.open(GOODBYE, s.seal(DATA, b"x"))  # a DATA record cannot pass as a goodbye


def test_replayed_record_is_rejected() -> None:
    s, o = _pair()
    first = s.seal(DATA, b"one")
    o.open(DATA, first)
    with pytest.raises(IntegrityError, match=r"replayed record from alice \(sequence 0"):
        o.open(DATA, first)


def test_reordered_record_is_rejected() -> None:
    s, o = _pair()
    s.seal(DATA, b"one")
    second = s.seal(DATA, b"two")
    with pytest.raises(IntegrityError, match="reordered or dropped"):
        o.open(DATA, second)


@pytest.mark.parametrize("size", [0, 10, crypto.MIN_SEALED - 1, crypto.MIN_SEALED + 1])
def test_malformed_sealed_lengths(size: int) -> None:
    _, o = _pair()
    with pytest.raises(IntegrityError, match="malformed encrypted record"):
        o.open(DATA, bytes(size))


def test_fingerprint_is_short_and_stable() -> None:
    fp = crypto.fingerprint(b"k" * 32, b"ctx")
    assert fp == crypto.fingerprint(b"k" * 32, b"ctx") and len(fp) == 14
    assert fp != crypto.fingerprint(b"k" * 32, b"other")

"""The broker with many real peers on real sockets (in-process asyncio), and through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from pathlib import Path

import pytest

from cdev.chat.broker import BrokerConfig
from cdev.chat.client import Event, RoomClient, open_room
from cdev.chat.framing import DATA, ERROR, HEADER, encode, read_record
from cdev.errors import CdevError, IntegrityError
from cdev.plugins import get_registry
from tests.chat_helpers import (
    HANG_GUARD,
    broker,
    options,
    run,
    spawn,
    tcp,
    wait_for_line,
    wait_listening,
)


async def _wait_until(predicate: object, what: str) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def _next(client: RoomClient, kind: str) -> Event:
    async with asyncio.timeout(HANG_GUARD):
        while True:
            ev = await client.receive()
            if ev.kind == kind:
                return ev


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_hundred_peers_every_message_once_and_in_order(encrypted: bool) -> None:
    # Encrypted: every receiver verifies every sender's Ed25519 signature (~0.3 ms here), and
    # all 100 members share one process and core in this test, so fewer messages each.
    peers, per_peer = 100, (3 if encrypted else 10)

    async def main() -> None:
        config = BrokerConfig(quiet=True, encrypted=encrypted)
        async with broker(config) as (_, address):
            pw = "room pass" if encrypted else None
            clients = await asyncio.gather(
                # 100 joins in one process: ~100 SPAKE2 runs (pure Python, ~27 ms each) on
                # one core, where real members would each run theirs on their own machine.
                *(
                    open_room(tcp(), address, options(f"p{i}", pw, handshake_timeout=90))
                    for i in range(peers)
                )
            )
            got: dict[str, dict[str, list[int]]] = {c.opts.nick: {} for c in clients}

            async def reader(c: RoomClient) -> None:
                mine = got[c.opts.nick]
                expected = (peers - 1) * per_peer
                n = 0
                while n < expected:
                    ev = await c.receive()
                    if ev.kind == "message":
                        sender, seq = ev.text.decode().split(":")
                        assert sender == ev.nick  # the text says who sent it
                        mine.setdefault(ev.nick, []).append(int(seq))
                        n += 1

            tasks = [asyncio.create_task(reader(c)) for c in clients]
            # Everyone sees everyone before anyone talks (join notices are events too).
            await _wait_until(lambda: all(len(c.members) == peers - 1 for c in clients), "joins")
            for i in range(per_peer):
                for c in clients:
                    c.writer.write(c.message_record(f"{c.opts.nick}:{i}".encode()))
            await asyncio.gather(*(c.writer.drain() for c in clients))
            async with asyncio.timeout(HANG_GUARD * 2):
                await asyncio.gather(*tasks)
            for nick, by_sender in got.items():
                assert set(by_sender) == {c.opts.nick for c in clients} - {nick}
                for seqs in by_sender.values():
                    assert seqs == list(range(per_peer))  # exactly once, in order
            if encrypted:
                assert len({c.fingerprint for c in clients}) == 1
            for c in clients:
                await c.close()

    run(main, HANG_GUARD * 6)


def test_unix_socket_room(tmp_path: Path) -> None:
    async def main() -> None:
        unix = get_registry().transport("unix")
        path = str(tmp_path / "room.sock")
        async with broker(transport=unix, address=path):
            a = await open_room(unix, path, options("alice"))
            b = await open_room(unix, path, options("bob"))
            assert (await _next(a, "joined")).nick == "bob"
            await a.send(b"over unix")
            ev = await _next(b, "message")
            assert (ev.nick, ev.text) == ("alice", b"over unix")
            await b.goodbye()
            assert (await _next(a, "goodbye")).nick == "bob"
            left = await _next(a, "left")
            assert (left.nick, left.text) == ("bob", b"goodbye")
            await a.close()
            await b.close()

    run(main)


def test_wrong_passphrase_is_rejected_before_any_message() -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, encrypted=True)
        async with broker(config) as (_, address):
            alice = await open_room(tcp(), address, options("alice", "right"))
            bob = await open_room(tcp(), address, options("bob", "right"))
            assert (await _next(alice, "joined")).nick == "bob"
            with pytest.raises(CdevError, match="wrong passphrase: alice could not confirm"):
                await open_room(tcp(), address, options("eve", "wrong"))
            # alice, eve's sponsor, is told; nobody in the group ever lists eve
            notice = await _next(alice, "notice")
            assert b"a join by eve failed the passphrase check" in notice.text
            with pytest.raises(CdevError, match="encrypted room: add --encrypt"):
                await open_room(tcp(), address, options("plain"))
            carol = await open_room(tcp(), address, options("carol", "right"))
            assert (await _next(alice, "joined")).nick == "carol"
            assert sorted(m.nick for m in carol.members.values()) == ["alice", "bob"]
            await carol.send(b"hi")
            assert (await _next(alice, "message")).text == b"hi"
            assert (await _next(bob, "message")).text == b"hi"
            for c in (alice, bob, carol):
                await c.close()

    run(main)


def test_a_typo_or_a_squatter_first_in_the_room_locks_nobody_out() -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, encrypted=True)
        async with broker(config) as (_, address):
            typo = await open_room(tcp(), address, options("typo", "rihgt"))
            # one against one: nobody can tell who mistyped, so alice is not refused...
            alice = await open_room(tcp(), address, options("alice", "right"))
            assert alice.members == {} and alice.fingerprint != typo.fingerprint
            told = await _next(alice, "notice")
            assert b"does not match typo's" in told.text
            # ...and the next one with the right passphrase joins alice, not the typo
            bob = await open_room(tcp(), address, options("bob", "right"))
            assert [m.nick for m in bob.members.values()] == ["alice"]
            assert bob.fingerprint == alice.fingerprint
            await bob.send(b"we are in")
            assert (await _next(alice, "message")).text == b"we are in"
            await typo.send(b"can anyone read me?")
            await bob.send(b"still here")
            # the typo's records are not shown, and do not end anyone's session
            ev = await _next(alice, "message")
            assert (ev.nick, ev.text) == ("bob", b"still here")
            for c in (typo, alice, bob):
                await c.close()

    run(main)


def test_silent_peer_times_out_and_others_carry_on() -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, handshake_timeout=0.3)
        async with broker(config) as (_, address):
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            alice = await open_room(tcp(), address, options("alice"))
            bob = await open_room(tcp(), address, options("bob"))
            await read_record(reader)  # the broker's HELLO; we never answer
            rtype, body = await asyncio.wait_for(read_record(reader), HANG_GUARD)
            assert rtype == ERROR and b"no handshake within 0.3 s" in body
            assert await reader.read() == b""  # and it closed the connection
            await alice.send(b"still here")
            assert (await _next(bob, "message")).text == b"still here"
            writer.close()
            await alice.close()
            await bob.close()

    run(main)


def test_stuck_peer_is_dropped_and_does_not_stall_others() -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, max_queue=256 << 10, slow_grace=0.5, rate=1e6, burst=1e6)
        async with broker(config) as (_, address):
            alice = await open_room(tcp(), address, options("alice"))
            bob = await open_room(tcp(), address, options("bob"))
            stuck = await open_room(tcp(), address, options("stuck"))  # never reads again
            await _next(bob, "joined")
            chunk = b"x" * 4000
            received = sent = 0

            async def bob_reads() -> Event:
                nonlocal received
                while True:
                    ev = await bob.receive()
                    if ev.kind == "message":
                        received += 1
                    elif ev.kind == "left":
                        return ev

            left_task = asyncio.create_task(bob_reads())
            async with asyncio.timeout(HANG_GUARD):
                # Talk until the broker gives up on the peer that does not read.
                while not left_task.done():
                    alice.writer.write(alice.message_record(chunk))
                    sent += 1
                    await alice.writer.drain()
                    if sent % 64 == 0:
                        await asyncio.sleep(0.001)
                left = await left_task
            assert left.nick == "stuck" and b"too slow" in left.text
            async with asyncio.timeout(HANG_GUARD):
                while received < sent:  # bob, who reads, lost nothing
                    if (await bob.receive()).kind == "message":
                        received += 1
            for c in (alice, bob, stuck):
                await c.close()

    run(main)


def test_flooding_peer_is_throttled_not_the_room() -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, rate=200, burst=200)
        async with broker(config) as (_, address):
            flood = await open_room(tcp(), address, options("flood"))
            alice = await open_room(tcp(), address, options("alice"))
            bob = await open_room(tcp(), address, options("bob"))
            await _next(alice, "joined")
            total = 5000

            async def flooding() -> None:
                for i in range(total):
                    flood.writer.write(flood.message_record(b"spam %d" % i))
                    await flood.writer.drain()

            flooder = asyncio.create_task(flooding())
            seen = 0
            while seen < 300:  # the flood is well under way (past its burst)
                if (await bob.receive()).kind == "message":
                    seen += 1
            await alice.send(b"can you hear me")
            while True:
                ev = await bob.receive()
                if ev.nick == "alice":
                    break
                seen += 1
            assert ev.text == b"can you hear me"
            assert seen < total  # alice got through while the flood was being held back
            flooder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await flooder
            for c in (flood, alice, bob):
                await c.close()

    run(main)


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("tamper", "record from mallory failed authentication"),
        ("replay", "replayed record from mallory (sequence 1, expected 2)"),
        ("reorder", "reordered or dropped record from mallory (sequence 2, expected 1)"),
    ],
)
def test_tampered_replayed_reordered_relays_close_the_connection(attack: str, message: str) -> None:
    async def main() -> None:
        config = BrokerConfig(quiet=True, encrypted=True)
        async with broker(config) as (_, address):
            alice = await open_room(tcp(), address, options("alice", "pw"))
            mallory = await open_room(tcp(), address, options("mallory", "pw"))
            await _next(alice, "joined")
            first = mallory.message_record(b"first")
            if attack == "tamper":
                bad = bytearray(first)
                bad[4 + 8 + 16] ^= 1  # the ciphertext, under the MAC
                mallory.writer.write(bytes(bad))
            elif attack == "replay":
                mallory.writer.write(first + first)
            else:
                mallory.writer.write(mallory.message_record(b"second") + first)
            await mallory.writer.drain()
            with pytest.raises(IntegrityError, match=re.escape(message)):
                while True:
                    ev = await _next(alice, "message")
                    assert ev.text == b"first"
            await alice.close()
            await mallory.close()

    run(main)


def test_oversize_and_malformed_records_drop_only_the_sender() -> None:
    async def main() -> None:
        async with broker() as (b, address):
            alice = await open_room(tcp(), address, options("alice"))
            bob = await open_room(tcp(), address, options("bob"))
            rude = await open_room(tcp(), address, options("rude"))
            rude.writer.write(HEADER.pack(DATA, 0, 60000))
            with pytest.raises(CdevError, match="oversize record: 60000"):
                await _next(rude, "message")
            left = await _next(alice, "left")
            assert left.nick == "rude" and b"oversize" in left.text
            weird = await open_room(tcp(), address, options("weird"))
            weird.writer.write(encode(ERROR, b"{}"))  # not something a peer may send
            with pytest.raises(CdevError, match="unexpected ERROR record"):
                await _next(weird, "message")
            await bob.send(b"fine")
            assert (await _next(alice, "message")).text == b"fine"
            assert sorted(p.nick for p in b.peers.values()) == ["alice", "bob"]
            for c in (alice, bob, rude, weird):
                await c.close()

    run(main)


def test_cli_broker_and_joins_in_pipe_mode() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    brk = spawn("broker", address, "--encrypt")
    try:
        wait_listening(address)
        peers = {}
        for nick in ("alice", "bob", "carol"):
            peers[nick] = spawn("join", address, "--nick", nick, "-e", passphrase="pw")
            wait_for_line(peers[nick], "stderr", b"joined as")
        wait_for_line(peers["alice"], "stderr", b"carol joined")
        for nick, p in peers.items():
            p.stdin.write(f"hello from {nick}\n".encode())  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        for nick, p in peers.items():
            others = sorted(f"<{o}> hello from {o}\n".encode() for o in peers if o != nick)
            got = sorted(p.stdout.readline() for _ in others)  # type: ignore[union-attr]
            assert got == others
        bad = spawn("join", address, "--nick", "eve", "-e", passphrase="nope")
        _, err = bad.communicate(b"", timeout=HANG_GUARD)
        assert bad.returncode == 1 and b"wrong passphrase" in err
        for p in peers.values():
            p.stdin.close()  # type: ignore[union-attr]
            assert p.wait(HANG_GUARD) == 0
        wait_for_line(brk, "stderr", b"carol left: goodbye")
    finally:
        brk.terminate()
        assert brk.wait(HANG_GUARD) == 0

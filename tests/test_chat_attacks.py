"""The chat attacker suite: a fake listener, a fake broker, a whole earlier stream replayed to a
newcomer, a forged sender, oversized records and escape sequences. Real cdev processes and real
sockets face hand-written hostile servers; each attack must end in one clear line (or a refusal
the victim names) and never in a traceback, a hang or text that drives a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import struct
from collections.abc import Awaitable, Callable

import pytest
import spake2  # type: ignore[import-untyped]

from cdev.chat import crypto
from cdev.chat.broker import BrokerConfig
from cdev.chat.client import open_room
from cdev.chat.framing import (
    DATA,
    ERROR,
    HEADER,
    HELLO,
    JOINED,
    LEFT,
    RELAY,
    RELAY_PREFIX,
    WELCOME,
    RecordParser,
    encode,
    encode_json,
    read_record,
)
from cdev.chat.pake import Pake
from cdev.chat.room import NEWCOMER_ID, SPONSOR_ID, sender_keys
from cdev.chat.twopeer import PAKE_IDS
from cdev.errors import CdevError, IntegrityError
from tests.chat_helpers import (
    CDEV,
    HANG_GUARD,
    broker,
    env,
    free_port,
    one_error_line,
    options,
    run,
    spawn,
    tcp,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _cdev(*args: str, passphrase: str = "right") -> tuple[int, bytes]:
    """Run a real ``cdev chat`` process; its exit code and stderr. Its stdin stays open (a
    user who has not typed yet), so only the attacker can end it."""
    proc = await asyncio.create_subprocess_exec(
        CDEV,
        "chat",
        *args,
        env=env(passphrase),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD)
    assert proc.stdin is not None
    proc.stdin.close()
    assert out == b"", out  # nothing from an attacker is ever shown as a message
    assert proc.returncode is not None
    return proc.returncode, err


async def _against(handler: Handler, *args: str, passphrase: str = "right") -> tuple[int, str]:
    """A real cdev process connecting to a hostile server; exit code and its error line."""
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port)
    async with server:
        code, err = await _cdev(*args, f"127.0.0.1:{port}", passphrase=passphrase)
    assert b"\x1b" not in err and b"\x9b" not in err  # nothing that drives a terminal
    return code, one_error_line(err)


def _hello(**fields: object) -> bytes:
    return encode_json(HELLO, {"proto": "cdev-chat", "version": 2, **fields})


# -- a fake listener ------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["right", "guess"])
def test_fake_listener_gets_one_guess_and_no_offline_test(victim: str) -> None:
    seen: dict[str, bytes] = {}
    guess = Pake(b"guess", True, *PAKE_IDS)  # a fake listener must commit to one guess

    async def fake_listener(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        mine = _hello(role="listen", nick="bank", mode="encrypted", pake=guess.message.hex())
        w.write(mine)
        _, hello = await read_record(r)
        _, tag = await read_record(r)  # the connector's key confirmation
        seen.update(mine=mine[4:], hello=hello, confirm=tag)
        w.write(encode(3, bytes(32)))  # a confirmation it cannot make
        await w.drain()
        with contextlib.suppress(Exception):
            await r.read()

    code, line = run(lambda: _against(fake_listener, "connect", "-e", passphrase=victim))
    assert code == 1 and "wrong passphrase" in line
    # The connector's HELLO carries a SPAKE2 element: no salt, no KDF cost, no verifier.
    hello = json.loads(seen["hello"])
    assert set(hello) == {"proto", "version", "role", "nick", "mode", "pake"}
    # Offline, even the right passphrase does not reproduce the connector's confirmation from
    # the attacker's run: the only passphrase its transcript can test is the one it committed
    # (the "guess" victim shows the reconstruction is the attacker's best: it then matches).
    theirs = bytes.fromhex(hello["pake"])
    context = crypto.transcript(seen["mine"], seen["hello"])
    for candidate in (b"guess", b"right"):
        attempt = spake2.SPAKE2_A(_pw(candidate), idA=PAKE_IDS[0], idB=PAKE_IDS[1])
        attempt.start()
        attempt.xy_scalar = guess._state.xy_scalar  # the secret behind the element it sent
        attempt.outbound_message = guess._state.outbound_message
        master = crypto.derive(attempt.finish(theirs), "master", context)
        mac = crypto.derive(master, "mac connect>listen", context)
        tag = hmac.new(mac, crypto.LABEL + b"confirm\0connect" + context, "sha256").digest()
        assert (tag == seen["confirm"]) == (candidate == victim.encode() == b"guess")


def _pw(passphrase: bytes) -> bytes:
    return hashlib.sha256(b"cdev-chat v2 passphrase\0" + passphrase).digest()


def test_a_version_1_listener_asking_for_cheap_scrypt_is_refused() -> None:
    async def old_listener(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            encode_json(
                HELLO,
                {
                    "proto": "cdev-chat",
                    "version": 1,
                    "role": "listen",
                    "nick": "x",
                    "mode": "encrypted",
                    "nonce": "00" * 16,
                    "salt": "00" * 16,
                    "scrypt": [10, 1, 1],
                },
            )
        )
        with contextlib.suppress(Exception):
            await r.read()

    code, line = run(lambda: _against(old_listener, "connect", "-e"))
    assert code == 1 and "unsupported protocol version 1" in line


def test_escape_sequences_from_a_fake_listener_never_reach_the_terminal() -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\x9b31m gotcha \u202e"

    async def rude(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode_json(ERROR, {"message": evil}))
        await w.drain()
        w.close()

    code, line = run(lambda: _against(rude, "connect"))
    assert code == 1 and "peer refused the chat:" in line and "gotcha" in line
    assert "\u202e" not in line and "pwned" not in line


# -- a fake broker --------------------------------------------------------------------------


def _fake_broker(script: Handler) -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(_hello(role="broker", mode="encrypted"))
        await read_record(r)  # the joiner's HELLO
        with contextlib.suppress(Exception):
            await script(r, w)
            await r.read()

    return handler


def test_fake_broker_with_fake_members_gets_one_guess_per_connection() -> None:
    requests = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        gid = "g=" + "ab" * 16
        w.write(encode_json(WELCOME, {"id": 9, "nick": "eve", "members": 2}))
        w.write(encode_json(JOINED, {"id": 1, "nick": "alice", "info": gid}))
        w.write(encode_json(JOINED, {"id": 2, "nick": "bob", "info": gid}))
        await w.drain()
        rtype, body = await read_record(r)
        requests.append(body)
        req = json.loads(body[RELAY_PREFIX.size :])
        for sender in (1, 2):  # both fake members answer, each with its own guess
            pake = Pake(f"guess{sender}".encode(), False, NEWCOMER_ID, SPONSOR_ID)
            ack = {"nonce": req["nonce"], "pake": pake.message.hex(), "confirm": "00" * 32,
                   "welcome": "00" * 104}  # fmt: skip
            inner = json.dumps(ack).encode()
            w.write(encode(RELAY, RELAY_PREFIX.pack(sender, 15) + inner))
        await w.drain()
        while True:  # whatever else the joiner sends: only ever one request
            rtype, body = await read_record(r)
            if rtype == 10 and body[4] == 14:
                requests.append(body)

    code, line = run(lambda: _against(_fake_broker(script), "join", "--nick", "eve", "-e"))
    assert code == 1 and "wrong passphrase: alice could not confirm it" in line
    assert len(requests) == 1  # one PAKE run, answered once: one guess
    assert struct.unpack_from("!I", requests[0])[0] == 1  # to the longest-standing member


def test_a_version_1_broker_is_refused() -> None:
    async def old(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            encode_json(
                HELLO,
                {
                    "proto": "cdev-chat",
                    "version": 1,
                    "role": "broker",
                    "mode": "encrypted",
                    "salt": "00" * 16,
                    "scrypt": [10, 1, 1],
                },
            )
        )
        with contextlib.suppress(Exception):
            await r.read()

    code, line = run(lambda: _against(old, "join", "--nick", "eve", "-e"))
    assert code == 1 and "unsupported protocol version 1" in line


def test_escape_sequences_from_a_fake_broker_never_reach_the_terminal() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(encode_json(WELCOME, {"id": 9, "nick": "eve", "members": 0}))
        await w.drain()
        await read_record(r)  # eve founded the group and announces it
        w.write(encode_json(JOINED, {"id": 4, "nick": "zed", "info": ""}))
        w.write(encode_json(LEFT, {"id": 4, "nick": "zed", "reason": "\x1b]0;x\x07\x1b[31mbye"}))
        w.write(encode_json(ERROR, {"message": "\x1b[2Jbroker \x1b]52;c;Zm9v\x07says no"}))
        await w.drain()

    code, line = run(lambda: _against(_fake_broker(script), "join", "--nick", "eve", "-e"))
    assert code == 1 and line == "cdev: broker: broker says no"


# -- replaying a whole earlier stream to a newcomer -----------------------------------------


def test_replaying_an_earlier_stream_to_a_newcomer_is_refused() -> None:
    """Record everything a real broker sent to carol while she joined a real room and
    talked, then play it back, byte for byte, to dave (who knows the passphrase)."""

    async def main() -> None:
        recorded = bytearray()
        async with broker(BrokerConfig(quiet=True, encrypted=True)) as (_, address):
            alice = await open_room(tcp(), address, options("alice", "right"))
            bob = await open_room(tcp(), address, options("bob", "right"))
            host, port = address.rsplit(":", 1)

            async def recording_proxy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                ur, uw = await asyncio.open_connection(host, int(port))

                async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool):  # type: ignore[no-untyped-def]
                    while data := await src.read(65536):
                        if keep:
                            recorded.extend(data)
                        dst.write(data)
                    dst.close()

                await asyncio.gather(pipe(r, uw, False), pipe(ur, w, True))

            proxy_port = free_port()
            proxy = await asyncio.start_server(recording_proxy, "127.0.0.1", proxy_port)
            async with proxy:
                carol = await open_room(tcp(), f"127.0.0.1:{proxy_port}", options("carol", "right"))
                await alice.send(b"the launch code is 0000")
                while (await carol.receive()).kind != "message":
                    pass
                await carol.close()
            for c in (alice, bob):
                await c.close()

        async def replaying_broker(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(bytes(recorded))
            await w.drain()
            with contextlib.suppress(Exception):
                await r.read()

        code, line = await _against(replaying_broker, "join", "--nick", "dave", "-e")
        assert code == 1
        assert "does not answer our request (replayed or misdirected): refused" in line

    run(main, HANG_GUARD * 3)


# -- a forged sender ------------------------------------------------------------------------


def test_a_member_cannot_forge_another_members_messages() -> None:
    """mallory knows the passphrase and the group key, and a compromised path puts bob's id
    on her record; alice refuses it by name (it is not signed with bob's key)."""

    async def main() -> None:
        async with broker(BrokerConfig(quiet=True, encrypted=True)) as (_, address):
            host, port = address.rsplit(":", 1)
            alice_port = free_port()
            ids: dict[str, int] = {}

            async def rewriting_path(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                ur, uw = await asyncio.open_connection(host, int(port))

                async def up() -> None:
                    while data := await r.read(65536):
                        uw.write(data)
                    uw.close()

                async def down() -> None:
                    parser = RecordParser()
                    while data := await ur.read(65536):
                        for rtype, body in parser.feed(data):
                            if rtype == RELAY and ids:
                                sender, inner = RELAY_PREFIX.unpack_from(body)
                                if sender == ids["mallory"] and inner == DATA:
                                    body = RELAY_PREFIX.pack(ids["bob"], inner) + body[5:]
                            w.write(encode(rtype, body))
                    w.close()

                await asyncio.gather(up(), down())

            path = await asyncio.start_server(rewriting_path, "127.0.0.1", alice_port)
            async with path:
                alice = await open_room(tcp(), f"127.0.0.1:{alice_port}", options("alice", "pw"))
                bob = await open_room(tcp(), address, options("bob", "pw"))
                mallory = await open_room(tcp(), address, options("mallory", "pw"))
                while len(alice.members) < 2:
                    await alice.receive()
                ids.update({m.nick: mid for mid, m in alice.members.items()})
                # mallory seals as bob: bob's keys follow from the group key and bob's
                # public key, both of which she has; bob's signing key she has not.
                group_key = mallory.session.group_key
                bob_member = mallory.members[ids["bob"]]
                assert group_key is not None and bob_member is not None
                provider = mallory.opts.provider
                assert provider is not None
                as_bob = crypto.Sealer(provider, *sender_keys(group_key, bob_member.public))
                as_bob.seq = bob_member.expected
                sealed = as_bob.seal(DATA, b"bob says: wire the money to mallory")
                forged = sealed + mallory.session.key.sign(  # type: ignore[union-attr]
                    mallory.session._signed_part(DATA, sealed)
                )
                mallory.writer.write(encode(DATA, forged))
                await mallory.writer.drain()
                with pytest.raises(IntegrityError, match="forged record: not signed by bob's key"):
                    while True:
                        ev = await alice.receive()
                        assert ev.kind != "message"
                as_bob.close()
                for c in (alice, bob, mallory):
                    await c.close()

    run(main, HANG_GUARD * 3)


# -- oversized records ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (HEADER.pack(HELLO, 0, 9000) + b"{" + b" " * 8998 + b"}", "oversize HELLO record: 9000"),
        (HEADER.pack(DATA, 0, 60000), "oversize record: 60000"),
    ],
)
def test_the_broker_enforces_the_record_limits(record: bytes, message: str) -> None:
    async def main() -> None:
        async with broker() as (_, address):
            host, port = address.rsplit(":", 1)
            r, w = await asyncio.open_connection(host, int(port))
            await read_record(r)  # the broker's HELLO
            w.write(record)
            await w.drain()
            rtype, body = await asyncio.wait_for(read_record(r), HANG_GUARD)
            assert rtype == ERROR and message in json.loads(body)["message"]
            assert await r.read() == b""
            w.close()

    run(main)


def test_oversized_handshake_records_inside_direct_are_refused() -> None:
    async def main() -> None:
        async with broker(BrokerConfig(quiet=True, encrypted=True)) as (b, address):
            alice = await open_room(tcp(), address, options("alice", "pw"))
            eve = await open_room(tcp(), address, options("eve", "pw"))
            big = b"{" + b" " * 5000 + b"}"  # a JOIN_REQ over the 4096-byte control limit
            eve.writer.write(encode(10, struct.pack("!IB", alice.id, 14) + big))
            await eve.writer.drain()
            with pytest.raises(CdevError, match="oversize JOIN_REQ record: 5002"):
                while True:
                    await eve.receive()
            assert [p.nick for p in b.peers.values()] == ["alice"]
            for c in (alice, eve):
                await c.close()

    run(main)


def test_cdev_provider_picks_the_chat_provider_too() -> None:
    async def main() -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            CDEV, "chat", "connect", "127.0.0.1:1", "-e",
            env={**env("pw"), "CDEV_PROVIDER": "no-such-provider"},
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, err

    code, err = run(main)
    assert code == 2 and "no-such-provider" in one_error_line(err)


def test_garbage_drops_only_that_connection_and_the_listener_keeps_waiting() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "-e", passphrase="pw")
    try:
        from tests.chat_helpers import wait_for_line, wait_listening

        wait_listening(address)

        async def strangers() -> None:
            for junk in (b"GET / HTTP/1.1\r\n\r\n", HEADER.pack(HELLO, 0, 3) + b"[[[", b"\xff" * 9):
                r, w = await tcp().connect(address, 5)
                await read_record(r)  # the listener's HELLO
                w.write(junk)
                await w.drain()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(r.read(), HANG_GUARD)
                w.close()

        run(strangers)
        wait_for_line(listener, "stderr", b"dropped")
        assert listener.poll() is None
        listener.stdin.close()  # type: ignore[union-attr]
        peer = spawn("connect", address, "-e", passphrase="pw")
        peer.communicate(b"finally\n", timeout=HANG_GUARD)
        assert peer.returncode == 0
        assert listener.stdout.read() == b"finally\n"  # type: ignore[union-attr]
        assert listener.wait(HANG_GUARD) == 0
    finally:
        listener.kill()
        listener.wait()

"""Rooms over a real 3-node NATS cluster (nats-server processes with routes), nothing mocked.

Peers run in-process on asyncio, each with its own NATS connection through the ``nats``
transport plugin and the ordinary member protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdev_plugins.nats import NatsTransport, parse_url

from cdev.chat import crypto
from cdev.chat.bus import ROUTE, SUBJECT_PREFIX, BusConfig
from cdev.chat.buspeer import BusRoomClient, open_bus_room
from cdev.chat.cluster import LocalCluster
from cdev.chat.framing import DATA, HEADER
from cdev.chat.room import Event, sender_keys
from cdev.errors import CdevError, IntegrityError, UsageError
from tests.chat_helpers import CDEV, env, free_port, options

nats = pytest.importorskip("nats")  # part of the dev extra: present wherever tests run

PASS = "correct horse"
# Only there so a bug fails instead of hanging; generous because the machine is shared and
# every peer of these tests runs in this one process.
GUARD = 120.0
FAST = BusConfig(settle=0.3, heartbeat=0.5, expiry=5.0)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(size=3)
    c.start(timeout=60)
    try:
        yield c
    finally:
        c.stop()
    assert not any(c.alive(n) for n in c.nodes)


def home(c: LocalCluster, i: int, room: str) -> str:
    """Address whose first server is node i: peers are spread over the cluster."""
    k = i % len(c.nodes)
    order = c.nodes[k:] + c.nodes[:k]
    return "nats://" + ",".join(n.url for n in order) + f"/{room}"


TRANSPORTS: dict[int, NatsTransport] = {}


async def join(c: LocalCluster, i: int, room: str, passphrase: str = PASS) -> BusRoomClient:
    tr = NatsTransport(mode="encrypted", config=FAST, randomize=False, reconnect_wait=0.2)
    opts = options(f"p{i}", passphrase, handshake_timeout=120)
    client = await open_bus_room(tr, home(c, i, room), opts)
    TRANSPORTS[id(client)] = tr
    return client


async def join_all(c: LocalCluster, peers: int, room: str) -> list[BusRoomClient]:
    """p0 founds the group, the others join it at once (each through its home server)."""
    first = await join(c, 0, room)
    rest = await asyncio.gather(*(join(c, i, room) for i in range(1, peers)))
    return [first, *rest]


def server_port(client: BusRoomClient) -> int | None:
    """The port of the server this member's NATS connection is on now."""
    (room,) = TRANSPORTS[id(client)].rooms
    nc = room.bus.nc  # type: ignore[attr-defined]
    return int(nc.connected_url.port) if nc.is_connected else None


async def everyone_sees_everyone(clients: list[BusRoomClient]) -> None:
    """Read join notices until every member knows every other one."""

    async def until_full(c: BusRoomClient) -> None:
        while len(c.members) < len(clients) - 1:
            ev = await c.receive()
            assert ev.kind in ("joined", "notice"), ev

    async with asyncio.timeout(GUARD):
        await asyncio.gather(*(until_full(c) for c in clients))


class Log:
    """What one receiver saw: per sender the message numbers, gaps, goodbye or leave."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.gaps: dict[str, list[tuple[int, int]]] = {}  # (lost, seq of the next message)
        self.pending_gap: dict[str, int] = {}
        self.ended: dict[str, str] = {}


async def consume(client: BusRoomClient, log: Log, senders: int) -> None:
    while len(log.ended) < senders:
        ev: Event = await client.receive()
        if ev.kind == "message":
            nick, seq = ev.text.decode().split(":")
            assert nick == ev.nick  # the text says who sent it: no sender swapped
            if ev.nick in log.pending_gap:
                log.gaps.setdefault(ev.nick, []).append((log.pending_gap.pop(ev.nick), int(seq)))
            log.seqs.setdefault(ev.nick, []).append(int(seq))
        elif ev.kind == "gap":
            log.pending_gap[ev.nick] = int(ev.text)
        elif ev.kind == "goodbye":
            log.ended[ev.nick] = "goodbye"
        elif ev.kind == "left" and ev.nick not in log.ended:
            log.ended[ev.nick] = ev.text.decode()


async def talk(client: BusRoomClient, n: int, pause: float = 0.0) -> None:
    for k in range(n):
        client.writer.write(client.message_record(f"{client.opts.nick}:{k}".encode()))
        if pause:
            await client.writer.drain()
            await asyncio.sleep(pause)
    await client.writer.drain()
    await client.goodbye()


@pytest.mark.slow
def test_sixty_peers_on_three_servers_every_message_once_in_order(cluster: LocalCluster) -> None:
    peers, per_peer, room = 60, 100, "sixty"

    async def main() -> None:
        clients = await join_all(cluster, peers, room)
        await everyone_sees_everyone(clients)
        logs = [Log() for _ in clients]
        readers = [
            asyncio.create_task(consume(c, log, peers - 1))
            for c, log in zip(clients, logs, strict=True)
        ]
        await asyncio.gather(*(talk(c, per_peer) for c in clients))
        async with asyncio.timeout(500):
            await asyncio.gather(*readers)
        for c in clients:
            await c.close()
        for c, log in zip(clients, logs, strict=True):
            others = {f"p{i}" for i in range(peers)} - {c.opts.nick}
            silent = {k: v for k, v in log.ended.items() if k not in log.seqs}
            assert set(log.seqs) == others, (c.opts.nick, silent)
            for nick, seqs in log.seqs.items():
                assert seqs == list(range(per_peer)), (c.opts.nick, nick)
            assert log.gaps == {} and log.pending_gap == {}
            assert log.ended == dict.fromkeys(others, "goodbye")
            assert c.fingerprint == clients[0].fingerprint  # one group, encrypted end to end

    asyncio.run(main())


@pytest.mark.slow
def test_server_killed_mid_run_peers_move_over_losses_are_gaps(cluster: LocalCluster) -> None:
    peers, per_peer, room = 30, 100, "failover"

    async def main() -> None:
        clients = await join_all(cluster, peers, room)
        await everyone_sees_everyone(clients)
        victims = [c for i, c in enumerate(clients) if i % 3 == 0]  # homed on node 0
        assert {server_port(v) for v in victims} == {cluster.nodes[0].port}
        logs = [Log() for _ in clients]
        readers = [
            asyncio.create_task(consume(c, log, peers - 1))
            for c, log in zip(clients, logs, strict=True)
        ]
        senders = [asyncio.create_task(talk(c, per_peer, pause=0.03)) for c in clients]
        await asyncio.sleep(1.0)  # about a third of the way through
        await asyncio.to_thread(cluster.kill, 0)
        await asyncio.gather(*senders)
        async with asyncio.timeout(300):
            await asyncio.gather(*readers)
        alive_ports = {n.port for n in cluster.nodes[1:]}
        for v in victims:  # each victim moved to a surviving server
            assert server_port(v) in alive_ports, v.opts.nick
        for c in clients:
            await c.close()
        lost_total = 0
        for c, log in zip(clients, logs, strict=True):
            for nick, seqs in log.seqs.items():
                # Never twice, never out of order.
                assert seqs == sorted(set(seqs)), (c.opts.nick, nick)
                # Every hole is exactly a reported gap.
                gaps = dict((nxt, lost) for lost, nxt in log.gaps.get(nick, []))
                prev = -1
                for s in seqs:
                    if s != prev + 1:
                        assert gaps.get(s) == s - prev - 1, (c.opts.nick, nick, s, prev)
                        lost_total += s - prev - 1
                    prev = s
                if log.ended.get(nick) == "goodbye":
                    assert prev == per_peer - 1 or log.pending_gap.get(nick) == per_peer - 1 - prev
        # The room went on: everyone heard the survivors to their last message, the victims
        # included (through their new server), and the outage did lose messages.
        survivors = [x for x in clients if x not in victims]
        for c, log in zip(clients, logs, strict=True):
            for other in survivors:
                if other is not c:
                    assert log.seqs[other.opts.nick][-1] == per_peer - 1, (c.opts.nick, other)
        assert lost_total > 0
        print(f"lost and reported as gaps: {lost_total}")

    asyncio.run(main())


def test_wrong_passphrase_is_refused(cluster: LocalCluster) -> None:
    async def main() -> None:
        a, b = await join_all(cluster, 2, "locked")
        with pytest.raises(CdevError, match=r"wrong passphrase: p[01] could not confirm") as exc:
            await join(cluster, 2, "locked", passphrase="typo")
        assert "its group has 2 members); no message was exchanged" in str(exc.value)
        # the member that ran the PAKE as sponsor is told; nobody ever lists the stranger
        sponsor = a if "p0 could" in str(exc.value) else b
        async with asyncio.timeout(GUARD):
            while (ev := await sponsor.receive()).kind != "notice":
                pass
        assert b"a join by p2 failed the passphrase check" in ev.text
        assert [m.nick for m in b.members.values()] == ["p0"]
        assert [m.nick for m in a.members.values()] == ["p1"]
        await a.close()
        await b.close()

    asyncio.run(main())


async def _spy(cluster: LocalCluster, room: str, sender: BusRoomClient) -> tuple[Any, list[bytes]]:
    """Someone else on the bus: a plain NATS client subscribed to the room, on the sender's
    home server. It returns once one of the sender's heartbeats has reached it: from then on
    the sender's server knows of the subscription (a subscription on another node reaches it
    over the route a moment later, and the sender may not be on its home server after a
    reconnect), so the sender's next records cannot miss the spy."""
    nc = await nats.connect(servers=[f"nats://{cluster.nodes[0].url}"])
    seen: list[bytes] = []
    heard = asyncio.Event()

    async def cb(msg: Any) -> None:
        seen.append(msg.data)
        if msg.data[:1] == b"P":
            with contextlib.suppress(ValueError):
                if json.loads(msg.data[1:]).get("id") == sender.id:
                    heard.set()

    await nc.subscribe(f"{SUBJECT_PREFIX}.{room}", cb=cb)
    await nc.flush()
    async with asyncio.timeout(GUARD):
        await heard.wait()
    return nc, seen


async def _records(seen: list[bytes], n: int, sender: BusRoomClient) -> list[bytes]:
    """The first ``n`` records the spy saw from ``sender``."""

    def mine() -> list[bytes]:
        return [
            m
            for m in seen
            if m[:1] == b"R" and len(m) > ROUTE.size and ROUTE.unpack_from(m, 1)[0] == sender.id
        ]

    async with asyncio.timeout(GUARD):
        while len(mine()) < n:
            await asyncio.sleep(0.01)
    return mine()[:n]


async def _first_message(client: BusRoomClient) -> Event:
    async with asyncio.timeout(GUARD):
        while (ev := await client.receive()).kind != "message":
            pass
    return ev


@pytest.mark.parametrize("forger", ["outsider", "member"])
def test_forged_sender_is_refused(cluster: LocalCluster, forger: str) -> None:
    """A record published as p0: by someone on the bus without the group key (its MAC fails),
    or by member p2, who has the group key but not p0's signing key."""
    room = f"forge-{forger}"

    async def main() -> None:
        a, b, m = await join_all(cluster, 3, room)
        await everyone_sees_everyone([a, b, m])
        nc, seen = await _spy(cluster, room, a)
        await a.send(b"p0:0")
        assert (await _first_message(b)).text == b"p0:0"
        (genuine,) = await _records(seen, 1, a)
        route = genuine[1 : 1 + ROUTE.size]  # p0's id as sender, to everyone
        member_a = m.members[a.id]
        if forger == "outsider":
            group_key = os.urandom(32)
        else:
            assert m.session.group_key is not None
            group_key = m.session.group_key
        sealer = crypto.Sealer(
            m.opts.provider,  # type: ignore[arg-type]
            *sender_keys(group_key, member_a.public),
        )
        sealer.seq = 1
        sealed = sealer.seal(DATA, b"p0:1")
        assert m.session.key is not None  # p2's own signing key: the only one it has
        body = sealed + m.session.key.sign(m.session._signed_part(DATA, sealed))
        record = HEADER.pack(DATA, 0, len(body)) + body
        await nc.publish(f"{SUBJECT_PREFIX}.{room}", b"R" + route + record)
        expected = "p0 failed authentication" if forger == "outsider" else "forged record"
        with pytest.raises(IntegrityError, match=expected):
            await _first_message(b)
        await nc.close()
        for c in (a, b, m):
            await c.close()

    asyncio.run(main())


def test_replayed_stream_is_refused(cluster: LocalCluster) -> None:
    room = "replay"

    async def main() -> None:
        a, b = await join_all(cluster, 2, room)
        await everyone_sees_everyone([a, b])
        nc, seen = await _spy(cluster, room, a)
        for k in range(3):
            await a.send(f"p0:{k}".encode())
        for k in range(3):
            assert (await _first_message(b)).text == f"p0:{k}".encode()
        for m in await _records(seen, 3, a):  # the whole stream, again
            await nc.publish(f"{SUBJECT_PREFIX}.{room}", m)
        replayed = r"replayed record from p0 \(sequence 1, expected 4\)"
        with pytest.raises(IntegrityError, match=replayed):
            await _first_message(b)
        await nc.close()
        await a.close()
        await b.close()

    asyncio.run(main())


def test_newcomers_to_an_empty_room_at_once_make_one_group(cluster: LocalCluster) -> None:
    async def main() -> None:
        clients = list(await asyncio.gather(*(join(cluster, i, "race") for i in range(4))))
        await everyone_sees_everyone(clients)
        assert len({c.fingerprint for c in clients}) == 1
        for c in clients:
            await c.close()

    asyncio.run(main())


def test_hostile_bus_traffic_is_dropped_and_the_room_goes_on(cluster: LocalCluster) -> None:
    room = "hostile"

    async def main() -> None:
        a, b = await join_all(cluster, 2, room)
        await everyone_sees_everyone([a, b])
        nc = await nats.connect(servers=[f"nats://{cluster.nodes[2].url}"])
        subject = f"{SUBJECT_PREFIX}.{room}"
        presence = {"ev": "join", "id": 7, "nick": "x", "mode": "encrypted", "info": ""}
        junk = [
            b"",
            b"X" * 10,
            b"R" + ROUTE.pack(7, 0) + b"\x04\x00\xff\xff",  # unknown member, lying length
            b"R" + ROUTE.pack(a.id, 0) + b"\x04\x00\xff\xff",  # lying length
            b"R" + ROUTE.pack(a.id, 0) + b"\x63\x00\x00\x00",  # unknown record type
            b"R" + ROUTE.pack(a.id, 0) + b"\x0e\x00\x00\x00",  # JOIN_REQ to everyone
            b"R" * 70000,  # oversize
            b"P{not json",
            b"P" + json.dumps({"ev": "join", "id": 9}).encode(),  # no nick
            b"P" + json.dumps(presence | {"id": "zz"}).encode(),
            b"P" + json.dumps(presence | {"id": 0}).encode(),
            b"P" + json.dumps(presence | {"info": "\x1b[2J"}).encode(),
            b"P" + json.dumps(presence | {"nick": "\x1b]0;pwned\x07"}).encode(),
            b"P" + json.dumps(presence | {"mode": "plain"}).encode(),  # not this room
            b"P" + b"[" * 5000,
        ]
        for j in junk:
            await nc.publish(subject, j)
        await nc.publish(subject + ".to.12345", b"P{}")
        await nc.flush()
        await a.send(b"p0:0")
        ev = await _first_message(b)
        assert (ev.nick, ev.text) == ("p0", b"p0:0")
        assert [m.nick for m in b.members.values()] == ["p0"]
        (room_b,) = TRANSPORTS[id(b)].rooms
        # The junk came from another publisher on another server: the bus orders it after or
        # before p0's message as it likes, so wait (bounded) for b's agent to have seen it.
        async with asyncio.timeout(GUARD):
            while room_b.stats.dropped_hostile < 12:
                await asyncio.sleep(0.05)
        await nc.close()
        await a.close()
        await b.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "address",
    [
        "tcp://h:1/r",
        "nats://h:1",
        "nats://h:1/",
        "nats://h:0/r",
        "nats://h:70000/r",
        "nats://h:/r",
        "nats://h:1/r.x",
        "nats://h:1/r>",
        "nats://h:1/" + "r" * 65,
        "nats://bad host:1/r",
        "nats://" + ",".join(["h:1"] * 33) + "/r",
    ],
)
def test_malformed_addresses_are_usage_errors(address: str) -> None:
    with pytest.raises(UsageError):
        parse_url(address)


def test_address_list_with_default_ports() -> None:
    assert parse_url("nats://a,b:5000,[::1]:7/room-1") == (
        ["nats://a:4222", "nats://b:5000", "nats://[::1]:7"],
        "room-1",
    )


def test_cli_join_over_the_cluster_and_errors(cluster: LocalCluster) -> None:
    base = cluster.address
    e = env(PASS)
    bad = subprocess.run(
        [CDEV, "chat", "join", "nats://127.0.0.1:99999/r", "-n", "x"],
        env=e, capture_output=True, timeout=60, input=b"",
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.decode().count("\n") == 1 and "bad port" in bad.stderr.decode()
    listener = subprocess.Popen(
        [CDEV, "chat", "join", f"{base}/cli", "-n", "ana", "--encrypt"],
        env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert listener.stderr is not None
        line = listener.stderr.readline()  # fingerprint: ana is in
        assert b"fingerprint" in line
        listener.stderr.readline()
        talker = subprocess.run(
            [CDEV, "chat", "join", f"nats://{cluster.nodes[2].url}/cli", "-n", "bob", "-e"],
            env=e, capture_output=True, timeout=60, input=b"hello over the bus\n",
        )  # fmt: skip
        assert talker.returncode == 0, talker.stderr
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"<bob> hello over the bus\n"
    finally:
        listener.communicate(b"", timeout=30)
    assert listener.returncode == 0


def _free_block(n: int) -> int:
    """A base port with n free ports after it (cluster up takes P, P+1, ...)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        try:
            for k in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + k))
        except OSError:
            continue
        return base
    raise AssertionError("no free port block")


def test_cli_cluster_up_join_down(tmp_path: Path) -> None:
    state = tmp_path / "cluster.json"
    base = _free_block(3)
    up = subprocess.run(
        [CDEV, "chat", "cluster", "up", "--port", str(base), "--state", str(state)],
        env=env(), capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        ports = [base, base + 1, base + 2]
        assert (
            up.stdout.decode().strip()
            == "nats://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/ROOM"
        )
        again = subprocess.run(
            [CDEV, "chat", "cluster", "up", "--port", str(base), "--state", str(state)],
            env=env(), capture_output=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1 and b"already running" in again.stderr
        cluster = LocalCluster.load(state)
        assert all(cluster.alive(n) for n in cluster.nodes)
        cluster.wait_routes(10)  # up returned only once the routes had formed
        joined = subprocess.run(
            [CDEV, "chat", "join", f"nats://127.0.0.1:{base + 1}/try", "-n", "ana"],
            env=env(), capture_output=True, timeout=60, input=b"hi\n",
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
    finally:
        down = subprocess.run(
            [CDEV, "chat", "cluster", "down", "--state", str(state)],
            env=env(), capture_output=True, timeout=60,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert not any(cluster.alive(n) for n in cluster.nodes)
    assert not state.exists()
    gone = subprocess.run(
        [CDEV, "chat", "cluster", "down", "--state", str(state)],
        env=env(), capture_output=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 1 and gone.stderr.decode().startswith("cdev: no cluster")


def test_nats_transport_cannot_serve() -> None:
    r = subprocess.run(
        [CDEV, "chat", "broker", "nats://127.0.0.1:4222/x", "--transport", "nats"],
        env=env(), capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "nothing to listen on" in r.stderr.decode()


def test_no_server_answers_is_one_line_exit_1() -> None:
    port = free_port()  # nobody listens there
    r = subprocess.run(
        [CDEV, "chat", "join", f"nats://127.0.0.1:{port}/x", "-n", "ana"],
        env=env(), capture_output=True, timeout=60, input=b"",
    )  # fmt: skip
    assert r.returncode == 1
    expected = f"cdev: cannot connect to nats://127.0.0.1:{port}/x: no server answered\n"
    assert r.stderr.decode() == expected

"""Room benchmark: cdev's broker (plain and encrypted), rooms on a NATS cluster (1 and 3
servers, encrypted) and ``ncat --broker -m 2000``, side by side in one run.

Workload (issue 3): P peers each send M messages of 64 bytes; every message goes to every
other peer. Reported: deliveries/s, p50/p99 delivery latency, CPU used by the broker and by
the generators, and the idle RSS of a broker holding 1,000 peers. Run::

    .venv/bin/python bench/chat_bench.py [--peers 200] [--messages 100] [--workers 4]

NATS contenders: every peer runs the real nats transport (its own NATS connection and the
BusRoom that plays the broker's part for it) inside the generator, so the bus's per-member work
is counted in the generators' CPU and the servers' in "broker CPU"; with 3 servers the peers are
spread evenly over them (peer i starts on server i mod 3).

Load generators: the same asyncio design for every contender, spread over worker processes
(peers split evenly). Each peer writes its M messages back to back once every peer of every
worker is connected (a multiprocessing barrier), and reads everything the broker relays.
Latency is sampled: send and receive times of every 10th message of every sender (CLOCK_MONOTONIC,
shared by processes), measured from the sender's write() to the receiver's read().
Encrypted runs: every receiver fully verifies (MAC, sequence, decryption) all records of one
sender (receiver i checks sender i+1), so every sender's stream is verified by someone; the
others are counted per sender from the relay header, which is enough to check exactly-once
delivery. ncat relays raw bytes, so its messages are 64-byte lines carrying sender, sequence
number and padding, parsed by every receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import figures
import psutil

from cdev.chat import crypto
from cdev.chat.bus import BusConfig
from cdev.chat.buspeer import open_bus_room
from cdev.chat.client import RoomClient, open_room
from cdev.chat.cluster import LocalCluster
from cdev.chat.framing import DATA, ERROR, JOINED, LEFT, RELAY, decode_json
from cdev.chat.options import ChatOptions
from cdev.chat.room import sender_keys
from cdev.plugins import get_registry

ROOT = Path(__file__).resolve().parent.parent
CDEV = str(ROOT / ".venv" / "bin" / "cdev")
SAMPLE = 10
PASSPHRASE = "bench passphrase"
MSG = 64
# A record header and a RELAY prefix in one unpack: the receive loop is the generators' hot path.
RELAY_HEAD = struct.Struct("!BBHIB")


def line(idx: int, seq: int) -> bytes:
    text = f"S{idx:05d} {seq:05d} ".encode()
    return text + b"." * (MSG - 1 - len(text)) + b"\n"


@dataclass
class WorkerResult:
    received: int = 0
    bad: list[str] = field(default_factory=list)
    sends: list[tuple[int, int, int]] = field(default_factory=list)  # (sender, seq, t_ns)
    recvs: list[tuple[int, int, int]] = field(default_factory=list)
    first_send: int = 0
    last_recv: int = 0
    verified: int = 0
    lost: int = 0
    cpu: float = 0.0


def _nats_address(address: str, idx: int) -> str:
    servers, room = address.removeprefix("nats://").split("/")
    hosts = servers.split(",")
    k = idx % len(hosts)
    return "nats://" + ",".join(hosts[k:] + hosts[:k]) + "/" + room


async def _cdev_peer(address: str, idx: int, opts: ChatOptions) -> RoomClient:
    o = ChatOptions(
        nick=f"p{idx}",
        encrypt=opts.encrypt,
        provider=opts.provider,
        passphrase=opts.passphrase,
        handshake_timeout=120,
        connect_timeout=120,
    )
    if address.startswith("nats://"):
        from cdev_plugins.nats import NatsTransport

        tr = NatsTransport(mode=o.mode, config=BusConfig(settle=0.5), randomize=False)
        return await open_bus_room(tr, _nats_address(address, idx), o)
    return await open_room(get_registry().transport("tcp"), address, o)


async def _worker_main(
    kind: str, address: str, mine: list[int], peers: int, msgs: int, barrier: Any
) -> WorkerResult:
    res = WorkerResult()
    quiet = 30.0 if kind.startswith("nats") else 300.0  # no delivery for this long: lost
    encrypted = kind == "cdev-encrypted" or kind.startswith("nats")
    expected = (peers - 1) * msgs
    host, port = address.rsplit(":", 1)
    conns: list[tuple[int, asyncio.StreamReader, asyncio.StreamWriter, Any]] = []
    if kind == "ncat":
        for idx in mine:
            r, w = await asyncio.open_connection(host, int(port), limit=1 << 20)
            conns.append((idx, r, w, None))
    else:
        opts = ChatOptions(encrypt=encrypted)
        if encrypted:
            opts.passphrase = PASSPHRASE.encode()
            opts.provider = get_registry().open_provider("software")
        for idx in mine:
            c = await _cdev_peer(address, idx, opts)
            conns.append((idx, c.reader, c.writer, c))
        # Wait until every peer knows every other one (all joins are done).
        async with asyncio.timeout(300):
            while not all(len(c.members) == peers - 1 for *_, c in conns):
                for *_, c in conns:
                    while len(c.members) < peers - 1:
                        ev = await c.receive()
                        if ev.kind not in ("joined", "notice"):
                            res.bad.append(f"unexpected {ev.kind} before start")
    early: dict[int, bytes] = {}
    for idx, _, _, c in conns:
        if c is not None:
            early[idx] = await c.detach()  # from here on the receiver reads the socket
    await asyncio.to_thread(barrier.wait)

    async def sender(idx: int, w: asyncio.StreamWriter, c: RoomClient | None) -> None:
        for seq in range(msgs):
            rec = line(idx, seq) if c is None else c.message_record(line(idx, seq))
            if seq % SAMPLE == 0:
                res.sends.append((idx, seq, time.monotonic_ns()))
            w.write(rec)
        await w.drain()

    async def receiver(idx: int, r: asyncio.StreamReader, c: RoomClient | None) -> None:
        counts = [0] * peers
        got = 0
        now = time.monotonic_ns()
        buf = bytearray()
        head = early.get(idx, b"")  # what the client had read but not handled
        verify = (idx + 1) % peers
        id2idx: dict[int, int] = {}
        opener = None
        if c is not None:
            id2idx = {mid: int(m.nick[1:]) for mid, m in c.members.items()}
            if encrypted:
                member = next(m for m in c.members.values() if m.nick == f"p{verify}")
                group_key = c.session.group_key
                assert group_key is not None and c.opts.provider is not None
                opener = crypto.Opener(c.opts.provider, *sender_keys(group_key, member.public), "v")
                opener.expected = member.expected
        unpack = RELAY_HEAD.unpack_from
        while got < expected:
            try:
                data = head or await asyncio.wait_for(r.read(1 << 18), quiet)
            except TimeoutError:
                # Core NATS is at most once (a slow consumer is cut off by its server): what
                # has not come after this long is lost, and counted as such.
                res.lost += expected - got
                res.bad.append(f"peer {idx}: {expected - got} deliveries lost")
                break
            head = b""
            if not data:
                res.bad.append(f"peer {idx}: connection closed after {got} deliveries")
                break
            now = time.monotonic_ns()
            buf += data
            n = len(buf)
            pos = 0
            if c is None:  # ncat: 64-byte lines
                usable = n - n % MSG
                for p in range(0, usable, MSG):
                    s = int(buf[p + 1 : p + 6])
                    seq = int(buf[p + 7 : p + 12])
                    if seq != counts[s]:
                        res.bad.append(f"ncat: peer {idx} got seq {seq} of {s}, wanted {counts[s]}")
                    counts[s] = seq + 1
                    if seq % SAMPLE == 0:
                        res.recvs.append((s, seq, now))
                got += usable // MSG
                pos = usable
            else:
                while n - pos >= 9:  # a RELAY header plus its prefix; others are longer
                    rtype, _, length, sid, inner = unpack(buf, pos)
                    end = pos + 4 + length
                    if end > n:
                        break
                    if rtype == RELAY and inner != DATA:
                        # a late vouch or key list: group bookkeeping, not a delivery
                        if opener is not None and id2idx.get(sid) == verify:
                            opener.expected += 1  # it is numbered in that sender's stream
                    elif rtype == RELAY:
                        s = id2idx[sid]
                        k = counts[s]
                        counts[s] = k + 1
                        got += 1
                        if k % SAMPLE == 0:
                            res.recvs.append((s, k, now))
                        if s == verify:
                            body = bytes(buf[pos + 9 : end])
                            if opener is not None:  # the full check: signature and MAC
                                sig = body[-crypto.SIG_SIZE :]
                                body = body[: -crypto.SIG_SIZE]
                                signed = c.session._signed_part(inner, body) if c else b""
                                if not crypto.verify(member.key, sig, signed):
                                    res.bad.append(f"peer {idx}: bad signature from {s}")
                            text = opener.open(inner, body) if opener else body
                            if text != line(s, k):
                                res.bad.append(f"peer {idx}: wrong content from {s} #{k}")
                            res.verified += 1
                    elif rtype == LEFT:
                        # Leaving after all its messages arrived is a finished worker.
                        obj = decode_json(LEFT, bytes(buf[pos + 4 : end]))
                        s = id2idx.get(obj["id"], -1)
                        if s < 0 or counts[s] < msgs:
                            res.bad.append(f"peer {idx}: early LEFT {obj}")
                    elif rtype == ERROR:
                        res.bad.append(f"peer {idx}: {bytes(buf[pos + 4 : end])!r}")
                    elif rtype == JOINED:
                        obj = decode_json(JOINED, bytes(buf[pos + 4 : end]))
                        id2idx[obj["id"]] = int(obj["nick"][1:])
                    pos = end
            del buf[:pos]
        res.received += got
        res.last_recv = max(res.last_recv, now)  # the last delivery, not the quiet wait
        if got == expected and any(counts[s] != msgs for s in range(peers) if s != idx):
            res.bad.append(f"peer {idx}: per-sender counts wrong")

    t0 = time.monotonic_ns()
    res.first_send = t0
    tasks = [asyncio.create_task(receiver(i, r, c)) for i, r, _, c in conns]
    tasks += [asyncio.create_task(sender(i, w, c)) for i, _, w, c in conns]
    try:
        async with asyncio.timeout(300):
            await asyncio.gather(*tasks)
    except TimeoutError:
        res.bad.append("timed out waiting for deliveries")
    for *_, w, _ in conns:
        w.close()
    return res


def _worker(
    kind: str, address: str, mine: list[int], peers: int, msgs: int, barrier: Any, out: Any
) -> None:
    res = asyncio.run(_worker_main(kind, address, mine, peers, msgs, barrier))
    t = os.times()
    res.cpu = t.user + t.system
    out.put(res)


class _Cluster:
    """A NATS cluster standing in for a broker process in the measurements."""

    def __init__(self, size: int) -> None:
        self.cluster = LocalCluster(size=size)
        self.cluster.start()
        self.pids = [n.pid for n in self.cluster.nodes]

    def stop(self) -> None:
        self.cluster.stop()


def _start_broker(kind: str, port: int) -> subprocess.Popen[bytes]:
    if kind == "ncat":
        cmd = ["ncat", "--broker", "-m", "2000", "-l", "127.0.0.1", str(port)]
    else:
        cmd = [CDEV, "chat", "broker", f"127.0.0.1:{port}", "--quiet"]
        if kind == "cdev-encrypted":
            cmd.append("--encrypt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            time.sleep(0.2)  # let the broker forget the probe
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{kind} broker did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _cpu(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def run_workload(kind: str, peers: int, msgs: int, workers: int) -> dict[str, Any]:
    port = _free_port()
    cluster: _Cluster | None = None
    if kind.startswith("nats"):
        cluster = _Cluster(int(kind.split("-")[1]))
        address = cluster.cluster.address + "/bench"
        bprocs = [psutil.Process(pid) for pid in cluster.pids]
    else:
        broker = _start_broker(kind, port)
        address = f"127.0.0.1:{port}"
        bprocs = [psutil.Process(broker.pid)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    slices = [list(range(peers))[i::workers] for i in range(workers)]
    procs = [
        ctx.Process(target=_worker, args=(kind, address, s, peers, msgs, barrier, out))
        for s in slices
    ]
    for p in procs:
        p.start()
    barrier.wait()
    cpu0 = _cpu(bprocs)
    results = [out.get(timeout=600) for _ in procs]
    cpu1 = _cpu(bprocs)
    rss = sum(p.memory_info().rss for p in bprocs)
    for p in procs:
        p.join()
    if cluster is not None:
        cluster.stop()
    else:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
    sends = {(s, q): t for r in results for s, q, t in r.sends}
    lats = [(t - sends[(s, q)]) / 1e6 for r in results for s, q, t in r.recvs if (s, q) in sends]
    start = min(t for r in results for *_, t in r.sends)
    end = max(r.last_recv for r in results)
    delivered = sum(r.received for r in results)
    wall = (end - start) / 1e9
    bad = [b for r in results for b in r.bad]
    return {
        "contender": kind,
        "delivered": delivered,
        "expected": peers * (peers - 1) * msgs,
        "seconds": round(wall, 3),
        "deliveries_per_s": round(delivered / wall),
        "p50_ms": round(_pct(lats, 0.50), 1) if lats else None,
        "p99_ms": round(_pct(lats, 0.99), 1) if lats else None,
        "latency_samples": len(lats),
        "verified_records": sum(r.verified for r in results),
        "lost": sum(r.lost for r in results),
        "broker_cpu_s": round(cpu1 - cpu0, 2),
        "generator_cpu_s": round(sum(r.cpu for r in results), 2),
        "broker_rss_mib": round(rss / 2**20, 1),
        "broker_us_per_delivery": round((cpu1 - cpu0) / max(delivered, 1) * 1e6, 3),
        "total_us_per_delivery": round(
            (cpu1 - cpu0 + sum(r.cpu for r in results)) / max(delivered, 1) * 1e6, 3
        ),
        "problems": bad[:5],
        "problem_count": len(bad),
    }


async def _idle_peers(kind: str, address: str, mine: list[int], hold: Any, done: Any) -> None:
    host, port = address.rsplit(":", 1)
    conns = []
    opts = ChatOptions()
    for idx in mine:
        if kind == "ncat":
            conns.append(await asyncio.open_connection(host, int(port)))
        else:
            c = await _cdev_peer(address, idx, opts)
            conns.append((c.reader, c.writer))

    async def drain(r: asyncio.StreamReader) -> None:
        while await r.read(1 << 16):
            pass

    tasks = [asyncio.create_task(drain(r)) for r, _ in conns]  # read join notices
    await asyncio.to_thread(hold.wait)
    await asyncio.to_thread(done.wait)
    for t in tasks:
        t.cancel()


def _idle_worker(kind: str, address: str, mine: list[int], hold: Any, done: Any) -> None:
    asyncio.run(_idle_peers(kind, address, mine, hold, done))


def idle_rss(kind: str, peers: int, workers: int) -> dict[str, Any]:
    port = _free_port()
    broker = _start_broker(kind, port)
    bproc = psutil.Process(broker.pid)
    rss0 = bproc.memory_info().rss
    ctx = mp.get_context("fork")
    hold, done = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1)
    procs = [
        ctx.Process(
            target=_idle_worker,
            args=(kind, f"127.0.0.1:{port}", list(range(peers))[i::workers], hold, done),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    hold.wait()
    time.sleep(2)  # idle: let the broker settle
    conns = len(bproc.net_connections(kind="tcp"))
    rss = bproc.memory_info().rss
    done.wait()
    for p in procs:
        p.join()
    broker.send_signal(signal.SIGTERM)
    try:
        broker.wait(10)
    except subprocess.TimeoutExpired:
        broker.kill()
    return {
        "contender": kind,
        "peers": peers,
        "broker_connections": conns,
        "rss_before_mib": round(rss0 / 2**20, 1),
        "rss_idle_mib": round(rss / 2**20, 1),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Deliveries/s and p50/p99 latency per contender: median of the rounds, range whiskers."""
    by: dict[str, list[dict[str, Any]]] = {}
    for run in report["runs"]:
        by.setdefault(str(run["contender"]), []).append(run)
    if not by:
        raise ValueError("no runs")
    names = list(by)
    m, a = report["machine"], report["args"]
    title = (
        f"chat broker: {a['peers']} peers x {a['messages']} messages of 64 B, "
        f"{a['workers']} generator process(es), {len(by[names[0]])} round(s), {m['date']}\n"
        f"{m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}; "
        "bars: median, whiskers: range of the rounds"
    )
    fig, (left, right) = figures.new(2, title)

    def stat(key: str, scale: float = 1.0) -> tuple[list[float], list[float], list[float]]:
        values = [[float(r[key]) * scale for r in by[n]] for n in names]
        return ([statistics.median(v) for v in values], [min(v) for v in values],
                [max(v) for v in values])  # fmt: skip

    med, lo, hi = stat("deliveries_per_s", 1e-3)
    figures.bars(left, names, med, low=lo, high=hi, ylabel="deliveries/s (thousands)",
                 title="throughput (higher is better)", fmt="{:,.0f}k")  # fmt: skip
    width = 0.38
    xs = range(len(names))
    # Seconds when a broker queues for seconds (the recorded 200-peer runs), else ms.
    slow = max(float(r["p99_ms"]) for runs in by.values() for r in runs) >= 1000
    unit, scale = ("s", 1e-3) if slow else ("ms", 1.0)
    for k, (key, hatch) in enumerate((("p50_ms", ""), ("p99_ms", "//"))):
        med, lo, hi = stat(key, scale)
        err = [[v - x for v, x in zip(med, lo, strict=True)],
               [x - v for v, x in zip(med, hi, strict=True)]]  # fmt: skip
        pos = [x + (k - 0.5) * width for x in xs]
        drawn = right.bar(pos, med, width, yerr=err, capsize=3, hatch=hatch, edgecolor="white",
                          color=[figures.COLOURS[i % 10] for i in xs],
                          label=key.split("_")[0])  # fmt: skip
        right.bar_label(drawn, labels=[f"{v:.3g}" for v in med], label_type="center",
                        fontsize=8, bbox={"boxstyle": "round,pad=0.2", "fc": "white",
                                          "ec": "none"})  # fmt: skip
    right.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
    right.set_ylabel(f"send-to-delivery latency ({unit})")
    right.set_title("latency p50 (plain) and p99 (hatched), lower is better", fontsize=10)
    right.grid(True, axis="y", alpha=0.3)
    right.set_axisbelow(True)
    figures.save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=200)
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--idle-peers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-nats", dest="nats", action="store_false", help="skip the NATS runs")
    ap.add_argument("--no-idle", dest="idle", action="store_false", help="skip idle RSS")
    figures.add_options(ap)
    args = ap.parse_args()
    if args.from_json:
        sys.exit(figures.from_json(args, plot))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kinds = ["cdev-plain", "cdev-encrypted"]
    if args.nats:
        kinds += ["nats-1", "nats-3"]
    if shutil.which("ncat"):
        kinds.append("ncat")
    else:
        print("ncat not found: skipping it", file=sys.stderr)
    machine = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
    except (OSError, StopIteration):
        pass
    runs = []
    for rnd in range(args.rounds):
        for kind in kinds:  # interleaved so drift hits every contender alike
            r = run_workload(kind, args.peers, args.messages, args.workers)
            r["round"] = rnd
            runs.append(r)
            print(json.dumps(r), flush=True)
    idle = []
    for kind in ["cdev-plain", *(["ncat"] if "ncat" in kinds else [])] if args.idle else []:
        r = idle_rss(kind, args.idle_peers, args.workers)
        idle.append(r)
        print(json.dumps(r), flush=True)
    report = {
        "machine": machine,
        "args": vars(args)
        | {"json": str(args.json), "plot_out": str(args.plot_out), "from_json": None},
        "runs": runs,
        "idle": idle,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    plot_out = args.plot_out or (args.json.with_suffix(".png") if args.json else None)
    if plot_out:
        figures.draw(report, plot_out, plot)


if __name__ == "__main__":
    main()

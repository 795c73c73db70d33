"""virtio-cryptodev against QEMU's upstream virtio-crypto and the guest's own CPU.

Boots one guest (our QEMU build, TCG unless KVM works) carrying both paravirtual devices
and measures, inside it, requests per second at each size from 64 B to 256 KiB, every
contender interleaved with the others and repeated (TCG timings drift between boots and
over time, so only figures from the same boot and round are compared):

- ``virtio``: our device (/dev/cryptodev0),
- ``upstream``: QEMU's virtio-crypto-pci + cryptodev-backend-builtin, reached through AF_ALG
  bound to the guest driver ``virtio_crypto_aes_cbc`` (AES-CBC only: upstream has no MAC),
- ``guest-cpu``: the guest kernel's own CPU implementation through AF_ALG,
- ``software``: OpenSSL in the guest process (the cdev ``software`` provider, Python only).

Each twice: from C (bench/devbench.c, built static here: the cost of the path itself)
and from Python (the cdev providers, AF_ALG sockets: what a Python user sees). AES-128-CBC
and HMAC-SHA256 one request at a time, and AES-128-CBC with 32 requests in flight: our
device through CIOCASYNCCRYPT/CIOCASYNCFETCH from one fd, AF_ALG from 32 threads.

Usage: python bench/device_bench.py [--seconds 1.0] [--rounds 3] [--out docs/benchmarks/device.md]
       [--json FILE] [--plot-out FILE.png]; python bench/device_bench.py --from-json FILE
(--out also draws the figure next to the markdown, as .png)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZES = (64, 256, 1024, 4096, 16384, 65536, 262144)
# Upstream virtio-crypto never answers a 256 KiB request (the reader hangs in D state).
UPSTREAM_MAX = 65536
KEY = bytes([0x42]) * 32
IV = bytes(16)
HERE = Path(__file__).resolve().parent


# --- the part that runs in the guest -----------------------------------------------------
def _afalg(driver: str) -> Callable[[bytes], bytes]:
    tfm = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    tfm.bind(("skcipher", driver))
    tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, KEY[:16])
    op, _ = tfm.accept()
    # One sendmsg of the largest request: lift the socket's send buffer limit (root).
    op.setsockopt(socket.SOL_SOCKET, 32, 4 * max(SIZES))  # SO_SNDBUFFORCE

    def encrypt(data: bytes) -> bytes:
        op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=IV)
        return op.recv(len(data))

    encrypt.keep = (tfm, op)  # type: ignore[attr-defined]
    return encrypt


def _afalg_hmac(driver: str) -> Callable[[bytes], bytes]:
    tfm = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    tfm.bind(("hash", driver))
    tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, KEY)
    op, _ = tfm.accept()
    op.setsockopt(socket.SOL_SOCKET, 32, 4 * max(SIZES))

    def mac(data: bytes) -> bytes:
        op.sendall(data)
        return op.recv(32)

    mac.keep = (tfm, op)  # type: ignore[attr-defined]
    return mac


def _provider(name: str, hmac: bool) -> Callable[[bytes], bytes]:
    from cdev.plugins import get_registry
    from cdev.provider import AES_CBC, HMAC_SHA256

    provider = get_registry().open_provider(name)
    if hmac:
        ses = provider.open_session(mac=HMAC_SHA256, mac_key=KEY)
        return lambda data: ses.mac(data)
    session = provider.open_session(cipher=AES_CBC, key=KEY[:16])
    return lambda data: session.encrypt(data, IV)


def _proc_crypto_driver(name: str, exclude: str) -> str:
    best, prio = "", -1
    for block in Path("/proc/crypto").read_text().split("\n\n"):
        f = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in block.splitlines())}
        driver, p = f.get("driver", ""), int(f.get("priority", "0"))
        if f.get("name") == name and exclude not in driver and p > prio:
            best, prio = driver, p
    return best


def in_guest(seconds: float, rounds: int) -> None:
    # The kernel's CPU implementations: instantiate them once so /proc/crypto lists them.
    _afalg("cbc(aes)")
    _afalg_hmac("hmac(sha256)")
    cpu = _proc_crypto_driver("cbc(aes)", exclude="virtio")
    cpu_hash = _proc_crypto_driver("hmac(sha256)", exclude="virtio")
    contenders: dict[tuple[str, str], Callable[[bytes], bytes]] = {
        ("aes-cbc", "virtio"): _provider("virtio", False),
        ("aes-cbc", "upstream"): _afalg("virtio_crypto_aes_cbc"),
        ("aes-cbc", "guest-cpu"): _afalg(cpu),
        ("aes-cbc", "software"): _provider("software", False),
        ("hmac-sha256", "virtio"): _provider("virtio", True),
        ("hmac-sha256", "guest-cpu"): _afalg_hmac(cpu_hash),
        ("hmac-sha256", "software"): _provider("software", True),
    }
    # Same answer from everyone before anything is timed.
    sample = os.urandom(4096)
    for alg in ("aes-cbc", "hmac-sha256"):
        answers = {fn(sample) for (a, _), fn in contenders.items() if a == alg}
        assert len(answers) == 1, f"{alg}: contenders disagree"
    ops: dict[tuple[str, str], dict[int, list[float]]] = {k: {} for k in contenders}
    for _ in range(rounds):
        for size in SIZES:
            data = os.urandom(size)
            for key, fn in contenders.items():  # interleaved: same conditions for all
                if key[1] == "upstream" and size > UPSTREAM_MAX:
                    continue
                n, start = 0, time.perf_counter()
                deadline = start + seconds
                while True:
                    fn(data)
                    n += 1
                    now = time.perf_counter()
                    if now >= deadline:
                        break
                ops[key].setdefault(size, []).append(n / (now - start))
    records = [
        {"lang": "python", "mode": "sync", "alg": alg, "who": who, "size": size, "ops": v}
        for (alg, who), by_size in ops.items()
        for size, v in by_size.items()
    ]
    print(json.dumps({"cpu_driver": cpu, "hash_driver": cpu_hash, "records": records}))


# --- the part that runs on the host ------------------------------------------------------
def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _median(rec: dict[str, Any] | None) -> float | None:
    return statistics.median(rec["ops"]) if rec else None


def _table(
    records: list[dict[str, Any]],
    cols: list[tuple[str, str, str, str]],
    ratios: list[tuple[str, int, int]],
) -> list[str]:
    """One row per size: ops/s and MB/s of each (lang, mode, alg, who), then ratios
    of column pairs (name, numerator index, denominator index)."""  # fmt: skip
    index = {(r["lang"], r["mode"], r["alg"], r["who"], int(r["size"])): r for r in records}
    head = [f"{lang} {who}" + (" (32 threads)" if mode == "inflight32" and who != "virtio"
                               else " (async)" if mode == "inflight32" else "")
            for lang, mode, _, who in cols]  # fmt: skip
    out = [
        "| size | "
        + " | ".join(f"{h} ops/s | MB/s" for h in head)
        + "".join(f" | {name}" for name, _, _ in ratios)
        + " |",
        "|---:|" + "---:|---:|" * len(cols) + "---:|" * len(ratios),
    ]
    for size in SIZES:
        med = [_median(index.get((*c, size))) for c in cols]
        cells = " | ".join(
            f"{m:,.0f} | {m * size / 1e6:.2f}" if m is not None else "- | -" for m in med
        )
        rs = "".join(
            f" | {med[i] / med[j]:.2f}x" if med[i] and med[j] else " | -" for _, i, j in ratios
        )
        out.append(f"| {size} | {cells}{rs} |")
    return out


def on_host(args: argparse.Namespace) -> None:
    from cdev.vm.guest import UPSTREAM_VIRTIO_CRYPTO, Guest

    load_start = os.getloadavg()
    t0 = time.monotonic()
    with Guest(
        extra_args=UPSTREAM_VIRTIO_CRYPTO, progress=lambda t, f: print(t, file=sys.stderr)
    ) as g:
        ready = time.monotonic() - t0
        binary = Path(g.shared_dir) / "devbench"
        subprocess.run(
            ["cc", "-static", "-O2", "-pthread", "-Wall", "-Wextra", "-o", str(binary),
             str(HERE / "devbench.c")],
            check=True,
        )  # fmt: skip
        # Ready = the device node usable from Python in the guest (first call includes
        # Python's start-up in the guest, as a user's first command would).
        t1 = time.monotonic()
        first = g.run([sys.executable, "-m", "cdev", "session", "info", "--provider", "virtio"],
                      timeout=300)  # fmt: skip
        first_cmd = time.monotonic() - t1
        assert first.status == 0, first.stderr
        res = g.run(
            [sys.executable, str(Path(__file__).resolve()), "--in-guest",
             "--seconds", str(args.seconds), "--rounds", str(args.rounds)],
            timeout=7200,
        )  # fmt: skip
        assert res.status == 0, res.stderr
        data = json.loads(res.stdout)
        cres = g.run(
            [str(binary), str(args.seconds), str(args.rounds), data["cpu_driver"],
             data["hash_driver"]],
            timeout=7200,
        )  # fmt: skip
        assert cres.status == 0, cres.stderr
        records = data["records"] + [
            {"lang": "c", **json.loads(line)} for line in cres.stdout.splitlines() if line
        ]
        boot, accel, release = g.boot_seconds, g.accel, g.release
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "conditions": f"{accel.upper()} guest ({release}, 2 vCPUs), {_cpu_model()}, "
        f"{os.cpu_count()} host cores, load {load_start[0]:.2f} at start and "
        f"{os.getloadavg()[0]:.2f} at end, {args.rounds} rounds of {args.seconds:g} s",
        "cpu_driver": data["cpu_driver"],
        "hash_driver": data["hash_driver"],
        "boot_s": boot,
        "ready_s": ready,
        "first_cmd_s": first_cmd,
        "records": records,
    }
    text = "\n".join(markdown(result))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(text)
    plot_out = args.plot_out or (Path(args.out).with_suffix(".png") if args.out else None)
    if plot_out:
        import figures

        figures.draw(result, plot_out, plot)


def markdown(result: dict[str, Any]) -> list[str]:
    recs: list[dict[str, Any]] = result["records"]
    c, py = "c", "python"
    lines = [
        "# virtio-cryptodev benchmark",
        "",
        f"Run {result['date']}: {result['conditions']}; the median of the rounds is shown. "
        f"Guest agent up {result['boot_s']:.1f} s after QEMU started; the first cdev command "
        f"in the guest took {result['first_cmd_s']:.1f} s (mostly Python start-up).",
        "",
        "`virtio` = our device; `upstream` = QEMU's virtio-crypto-pci (builtin backend) via "
        f"AF_ALG `virtio_crypto_aes_cbc`; `guest-cpu` = the guest kernel's "
        f"`{result['cpu_driver']}` / `{result['hash_driver']}` via AF_ALG; `software` = "
        "OpenSSL in the guest process. `c` = bench/devbench.c, `python` = the cdev providers "
        "and Python AF_ALG sockets. Upstream is not measured above 64 KiB: it never answers "
        "a 256 KiB request (the reading process hangs in D state).",
        "",
        "## AES-128-CBC, one request at a time",
        "",
        *_table(
            recs,
            [
                (c, "sync", "aes-cbc", "virtio"),
                (c, "sync", "aes-cbc", "upstream"),
                (c, "sync", "aes-cbc", "guest-cpu"),
                (py, "sync", "aes-cbc", "virtio"),
                (py, "sync", "aes-cbc", "upstream"),
                (py, "sync", "aes-cbc", "guest-cpu"),
                (py, "sync", "aes-cbc", "software"),
            ],
            [("c virtio / upstream", 0, 1), ("python virtio / upstream", 3, 4)],
        ),
        "",
        "## HMAC-SHA256, one request at a time",
        "",
        *_table(
            recs,
            [
                (c, "sync", "hmac-sha256", "virtio"),
                (c, "sync", "hmac-sha256", "guest-cpu"),
                (py, "sync", "hmac-sha256", "virtio"),
                (py, "sync", "hmac-sha256", "guest-cpu"),
                (py, "sync", "hmac-sha256", "software"),
            ],
            [("c virtio / guest-cpu", 0, 1)],
        ),
        "",
        "## AES-128-CBC, 32 requests in flight (C)",
        "",
        "Ours: CIOCASYNCCRYPT/CIOCASYNCFETCH from one fd with poll(), one session per slot. "
        "AF_ALG has no such interface for a device driver from one socket: 32 threads, each "
        "with its own socket, one request at a time each.",
        "",
        *_table(
            recs,
            [
                (c, "inflight32", "aes-cbc", "virtio"),
                (c, "inflight32", "aes-cbc", "upstream"),
                (c, "inflight32", "aes-cbc", "guest-cpu"),
                (c, "sync", "aes-cbc", "upstream"),
            ],
            [
                ("virtio async / upstream 1 at a time", 0, 3),
                ("virtio async / upstream 32 threads", 0, 1),
            ],
        ),
        "",
    ]
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    """MB/s against request size, log axes, median with a min-max band: AES-CBC one at a
    time, HMAC-SHA256 one at a time, AES-CBC 32 in flight."""
    import figures

    recs: list[dict[str, Any]] = result["records"]
    panels = (("sync", "aes-cbc", "AES-128-CBC, one at a time"),
              ("sync", "hmac-sha256", "HMAC-SHA256, one at a time"),
              ("inflight32", "aes-cbc", "AES-128-CBC, 32 in flight"))  # fmt: skip
    fig, axes = figures.new(3, f"virtio-cryptodev in the guest, {result['date']}\n"
                            f"{result['conditions']}", width=5.0)  # fmt: skip
    # One colour per contender across the panels.
    every = sorted({(str(r["lang"]), str(r["who"])) for r in recs})
    colours = {k: figures.COLOURS[i % 10] for i, k in enumerate(every)}
    for ax, (mode, alg, title) in zip(axes, panels, strict=True):
        lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in recs:
            if r["mode"] == mode and r["alg"] == alg:
                lines.setdefault((r["lang"], r["who"]), []).append(r)
        for (lang, who), rs in sorted(lines.items()):
            rs.sort(key=lambda r: int(r["size"]))
            sizes = [int(r["size"]) for r in rs]
            mb = [[float(v) * int(r["size"]) / 1e6 for v in r["ops"]] for r in rs]
            colour = colours[(lang, who)]
            ax.plot(sizes, [statistics.median(v) for v in mb], marker="o", color=colour,
                    label=f"{lang} {who}", linestyle="-" if lang == "c" else "--")  # fmt: skip
            ax.fill_between(sizes, [min(v) for v in mb], [max(v) for v in mb], color=colour,
                            alpha=0.15)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(SIZES), [figures.size_label(n) for n in SIZES])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("request size (log scale)")
        ax.set_ylabel("throughput (MB/s, 10^6 B/s), log scale")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
    figures.save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--json", default="", help="also write the results as JSON here")
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    if not ap.parse_known_args()[0].in_guest:
        import figures  # host only: the guest runs this file without bench/ around it

        figures.add_options(ap)
    args = ap.parse_args()
    if getattr(args, "from_json", None):
        import figures

        sys.exit(figures.from_json(args, plot))
    if args.in_guest:
        in_guest(args.seconds, args.rounds)
    else:
        on_host(args)


if __name__ == "__main__":
    main()

"""virtio-cryptodev against QEMU's upstream virtio-crypto and the guest's software AES.

Boots one guest (our QEMU build, TCG unless KVM works) carrying both paravirtual devices,
then, inside it and in one Python process, measures AES-128-CBC encryption at each request
size for every contender, interleaved and repeated (TCG timings drift between boots and
over time, so only figures from the same boot and round are compared):

- ``virtio``: our device through the cdev ``virtio`` provider (ioctl on /dev/cryptodev0),
- ``upstream``: QEMU's virtio-crypto-pci + cryptodev-backend-builtin, reached through AF_ALG
  bound to the guest driver ``virtio_crypto_aes_cbc`` (how FACTS.md measured it),
- ``afalg-cpu``: the guest kernel's own CPU implementation of cbc(aes) through AF_ALG,
- ``software``: OpenSSL in the guest process (the cdev ``software`` provider).

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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZES = (64, 256, 1024, 4096, 16384, 65536)
KEY = bytes(range(16))
IV = bytes(16)


# --- the part that runs in the guest -----------------------------------------------------
def _afalg(driver: str) -> Callable[[bytes], bytes]:
    tfm = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    tfm.bind(("skcipher", driver))
    tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, KEY)
    op, _ = tfm.accept()

    def encrypt(data: bytes) -> bytes:
        op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=IV)
        return op.recv(len(data))

    encrypt.keep = (tfm, op)  # type: ignore[attr-defined]
    return encrypt


def _provider(name: str) -> Callable[[bytes], bytes]:
    from cdev.plugins import get_registry
    from cdev.provider import AES_CBC

    session = get_registry().open_provider(name).open_session(cipher=AES_CBC, key=KEY)
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
    # The kernel's CPU cbc(aes): instantiate it once through AF_ALG so /proc/crypto lists it.
    _afalg("cbc(aes)")
    cpu_driver = _proc_crypto_driver("cbc(aes)", exclude="virtio")
    contenders = {
        "virtio": _provider("virtio"),
        "upstream": _afalg("virtio_crypto_aes_cbc"),
        "afalg-cpu": _afalg(cpu_driver),
        "software": _provider("software"),
    }
    # Same answer from everyone before anything is timed.
    sample = os.urandom(4096)
    answers = {name: fn(sample) for name, fn in contenders.items()}
    assert len(set(answers.values())) == 1, "contenders disagree"
    results: dict[str, dict[int, list[float]]] = {n: {s: [] for s in SIZES} for n in contenders}
    for _ in range(rounds):
        for size in SIZES:
            data = os.urandom(size)
            for name, fn in contenders.items():  # interleaved: same conditions for all
                n, start = 0, time.perf_counter()
                deadline = start + seconds
                while True:
                    for _ in range(8):
                        fn(data)
                    n += 8
                    now = time.perf_counter()
                    if now >= deadline:
                        break
                results[name][size].append(n / (now - start))
    print(json.dumps({"cpu_driver": cpu_driver, "ops": results}))


# --- the part that runs on the host ------------------------------------------------------
def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def on_host(args: argparse.Namespace) -> None:
    from cdev.vm.guest import UPSTREAM_VIRTIO_CRYPTO, Guest

    t0 = time.monotonic()
    with Guest(
        extra_args=UPSTREAM_VIRTIO_CRYPTO, progress=lambda t, f: print(t, file=sys.stderr)
    ) as g:
        ready = time.monotonic() - t0
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
            timeout=3600,
        )  # fmt: skip
        assert res.status == 0, res.stderr
        data = json.loads(res.stdout)
        boot = g.boot_seconds
        accel = g.accel
        release = g.release
    ops: dict[str, dict[str, list[float]]] = data["ops"]
    names = list(ops)
    lines = [
        "# virtio-cryptodev benchmark",
        "",
        f"Date: {time.strftime('%Y-%m-%d')}. Host: {_cpu_model()}, {os.cpu_count()} cores, "
        f"load average at start {os.getloadavg()[0]:.2f}. Guest: Debian {release}, "
        f"{accel.upper()}, 2 vCPUs, our QEMU 7.2 build. One boot, one guest process; "
        f"AES-128-CBC encryption, one request at a time; {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per contender and size; median shown.",
        "",
        f"Boot to ready: guest agent up {boot:.1f} s after QEMU started "
        f"({ready:.1f} s including build checks); first cdev command in the guest "
        f"{first_cmd:.1f} s (mostly Python start-up under {accel.upper()}).",
        "",
        "Contenders: `virtio` = our device via `--provider virtio`; `upstream` = QEMU's "
        "virtio-crypto-pci (builtin backend) via AF_ALG `virtio_crypto_aes_cbc`; "
        f"`afalg-cpu` = the guest kernel's `{data['cpu_driver']}`; `software` = OpenSSL in the "
        "guest process.",
        "",
        "| size | " + " | ".join(f"{n} ops/s | {n} MB/s" for n in names) + " | virtio / upstream |",
        "|---:|" + "---:|---:|" * len(names) + "---:|",
    ]
    for size in SIZES:
        med = {n: statistics.median(ops[n][str(size)]) for n in names}
        cells = " | ".join(f"{med[n]:,.0f} | {med[n] * size / 1e6:.2f}" for n in names)
        lines.append(f"| {size} | {cells} | {med['virtio'] / med['upstream']:.2f}x |")
    lines += ["", "Raw samples (ops/s per round):", "", "```", json.dumps(ops, indent=1), "```", ""]
    text = "\n".join(lines)
    print(text)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "conditions": f"{accel.upper()} guest, {_cpu_model()}, {os.cpu_count()} cores, "
        f"{args.rounds} rounds of {args.seconds:g} s, median and range",
        "cpu_driver": data["cpu_driver"],
        "ops": ops,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(text)
    plot_out = args.plot_out or (Path(args.out).with_suffix(".png") if args.out else None)
    if plot_out:
        import figures

        figures.draw(result, plot_out, plot)


def plot(result: dict[str, Any], path: Path) -> None:
    """Ops/s and MB/s against request size per contender, log axes: median, min-max band."""
    import figures

    ops: dict[str, dict[str, list[float]]] = result["ops"]
    fig, (left, right) = figures.new(
        2, f"AES-128-CBC in the guest, one request at a time, {result['date']}\n"
        f"{result['conditions']}"
    )  # fmt: skip
    for i, (name, by_size) in enumerate(ops.items()):
        sizes = sorted(int(s) for s in by_size)
        samples = [[float(v) for v in by_size[str(s)]] for s in sizes]
        colour = figures.COLOURS[i % 10]
        for ax, scale in ((left, [1.0] * len(sizes)), (right, [s / 1e6 for s in sizes])):
            med = [statistics.median(v) * k for v, k in zip(samples, scale, strict=True)]
            ax.plot(sizes, med, marker="o", color=colour, label=name)
            ax.fill_between(sizes, [min(v) * k for v, k in zip(samples, scale, strict=True)],
                            [max(v) * k for v, k in zip(samples, scale, strict=True)],
                            color=colour, alpha=0.15)  # fmt: skip
    every = sorted({int(s) for by_size in ops.values() for s in by_size})
    for ax, ylabel in ((left, "requests/s (ops/s)"), (right, "throughput (MB/s, 10^6 B/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(every, [figures.size_label(n) for n in every])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("request size (log scale)")
        ax.set_ylabel(ylabel + ", log scale")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("operations per second", fontsize=10)
    right.set_title("throughput", fontsize=10)
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

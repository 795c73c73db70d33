"""What watching the device costs: host CPU per request with the device's trace events never
switched on, switched on with `cdev vq-trace --attach` reading live, and switched off again.

One boot (TCG unless KVM works), one guest process issuing a fixed number of AES-128-CBC
requests through the cdev ``virtio`` provider per step, one at a time. The host drives the
steps: ``baseline`` (never attached since boot), then alternations of ``on`` (a live
`cdev vq-trace --attach NAME --json` consuming every event, as a user would run it) and
``off`` (after detaching). For each step it reads QEMU's CPU time (user + system, all
threads, /proc/PID/stat) before and after: CPU per request is what tracing adds, and unlike
wall-clock throughput it barely moves when other work shares the host's cores (here: other
builds and guests; wall-clock ops/s varied 10x within one boot). The live reader's own CPU
is measured the same way.

Usage: python bench/trace_cost.py [--rounds 6] [--out docs/benchmarks/tracing.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdev.vm.channel import GuestProcess

SIZES = (64, 4096, 65536)
COUNT = {64: 600, 4096: 400, 65536: 150}  # requests per step
KEY = bytes(range(16))
IV = bytes(16)
ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


# --- the part that runs in the guest -----------------------------------------------------
def in_guest(share: Path, steps: int) -> None:
    from cdev.plugins import get_registry
    from cdev.provider import AES_CBC

    session = get_registry().open_provider("virtio").open_session(cipher=AES_CBC, key=KEY)
    data = {s: os.urandom(s) for s in SIZES}
    for i in range(steps):
        (share / f"at-{i}").write_text("")
        while not (share / f"go-{i}").exists():
            time.sleep(0.02)
        size = int((share / f"go-{i}").read_text())
        for _ in range(COUNT[size]):
            session.encrypt(data[size], IV)
        (share / f"done-{i}").write_text("")


# --- the part that runs on the host ------------------------------------------------------
def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def start_reader(target: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A live `cdev vq-trace --attach TARGET --json`, as a user runs it, once attached."""
    live = subprocess.Popen(
        [sys.executable, "-m", "cdev", "vq-trace", "--attach", target, "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    assert live.stderr is not None
    line = live.stderr.readline().decode()
    assert "attached" in line, line
    return live


def stop_reader(live: subprocess.Popen[bytes]) -> None:
    """Interrupt the reader as Ctrl-C would: it detaches, switching the events off."""
    live.send_signal(signal.SIGINT)
    live.communicate(timeout=120)


def _wait(path: Path, proc: GuestProcess) -> None:
    while not path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"guest side ended early: {proc.wait(10)}")
        time.sleep(0.005)


def on_host(args: argparse.Namespace) -> None:
    from cdev.vm.guest import Guest

    steps = [("baseline", s) for _ in range(args.rounds) for s in SIZES]
    steps += [(k, s) for _ in range(args.rounds) for k in ("on", "off") for s in SIZES]
    cpu: dict[str, dict[int, list[float]]] = {}
    reader_cpu = 0.0
    with Guest(progress=lambda t, f: print(t, file=sys.stderr)) as g:
        share = g.shared_dir
        proc = g.spawn(
            [sys.executable, str(Path(__file__).resolve()), "--in-guest", str(share),
             "--steps", str(len(steps))],
            timeout=3600,
        )  # fmt: skip
        live: subprocess.Popen[bytes] | None = None
        for i, (kind, size) in enumerate(steps):
            _wait(share / f"at-{i}", proc)
            if kind == "on" and live is None:
                live = start_reader(g.name)
            elif kind != "on" and live is not None:
                stop_reader(live)
                live = None
            start = cpu_seconds(g.qemu_pid)
            reader_start = cpu_seconds(live.pid) if live else 0.0
            (share / f"go-{i}").write_text(str(size))
            _wait(share / f"done-{i}", proc)
            used = cpu_seconds(g.qemu_pid) - start
            if live:
                reader_cpu += cpu_seconds(live.pid) - reader_start
            cpu.setdefault(kind, {}).setdefault(size, []).append(used / COUNT[size] * 1e6)
        res = proc.wait(timeout=3600)
        assert res.status == 0, res.stderr
        accel, release = g.accel, g.release
        # Events were on only while attached: the log holds exactly the traced requests.
        from cdev.vq_trace import exchanges, read_lines

        rows = list(exchanges(read_lines(g.trace_log)))
        if args.out and rows:
            from cdev.vq_plot import save_image

            save_image(rows, Path(args.out).with_suffix(".png"))
    _report(args, cpu, len(rows), reader_cpu, accel, release)


def _report(
    args: argparse.Namespace,
    cpu: dict[str, dict[int, list[float]]],
    traced: int,
    reader_cpu: float,
    accel: str,
    release: str,
) -> None:
    med = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in cpu.items()}
    lines = [
        "# What tracing costs",
        "",
        f"Date: {time.strftime('%Y-%m-%d')}. Host: {_cpu_model()}, {os.cpu_count()} cores "
        f"shared with other builds and guests (load average {args.load:.1f} at start). Guest: "
        f"Debian {release}, {accel.upper()}, 2 vCPUs, our QEMU 7.2 build (log trace "
        "backend). One boot, one guest process, AES-128-CBC through `--provider virtio`, one "
        f"request at a time, {', '.join(f'{n} x {s} B' for s, n in COUNT.items())} per step; "
        f"{args.rounds} steps per size of `baseline` (never attached since boot), then "
        f"{args.rounds} alternations of `on` (a live `cdev vq-trace --attach NAME --json` "
        "reading every event) and `off` (after detaching). Figure: QEMU's CPU time (user + "
        "system, all threads) per request, median over the steps. Under TCG it includes "
        "emulating the guest's Python, so it is the whole cost of a request as the host "
        f"pays it. {traced} requests were traced during the `on` steps; the live reader "
        f"used {reader_cpu:.2f} s of CPU for them ({reader_cpu / max(traced, 1) * 1e6:.0f} "
        "µs per request).",
        "",
        "![latency and throughput of the traced requests](tracing.png)",
        "",
        "| size | baseline µs CPU/request | off | off vs baseline | on | on vs baseline |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SIZES:
        b, off, on = med["baseline"][s], med["off"][s], med["on"][s]
        lines.append(
            f"| {s} | {b:,.0f} | {off:,.0f} | {100 * (off / b - 1):+.1f} % | {on:,.0f} | "
            f"{100 * (on / b - 1):+.1f} % |"
        )
    lines += ["", "Raw samples (µs of QEMU CPU per request, per step):", "", "```",
              json.dumps(cpu, indent=1), "```", ""]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default="")
    ap.add_argument("--in-guest", default="", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.load = os.getloadavg()[0]
    if args.in_guest:
        in_guest(Path(args.in_guest), args.steps)
    else:
        on_host(args)


if __name__ == "__main__":
    main()

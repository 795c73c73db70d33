"""The device alone: QEMU's CPU per request with its trace events never on, on with a live
`cdev vq-trace --attach` reading, and off again, with no guest CPU to emulate.

``bench/trace_cost.py`` measures a real guest, but under TCG the host pays mostly for
emulating the guest's Python and the figures drift with the host's load. Here QEMU runs
under the qtest accelerator (``tests/qtest_guest.py`` plays the guest: it lays the chains
out in guest memory and kicks the queue), so QEMU's CPU time is the device, virtio and the
qtest protocol only, and a trace line's cost is a visible share of it. Batches of 24
AES-128-CBC requests; QEMU's user + system CPU (all threads, /proc/PID/stat) per request.

Two QEMUs run side by side: ``control`` is never attached; the other alternates ``on``
(a live `cdev vq-trace --attach` reading) and ``off`` (after detaching), and every step of
it is preceded by a step of the control, so the host's drift (other work on its cores)
cancels in the ratios: off/control is what tracing costs switched off, on/control switched
on. Medians of the per-pair ratios.

Usage: python bench/trace_cost_device.py [--rounds 5] [--requests 4000] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.trace_cost import _cpu_model, cpu_seconds, start_reader, stop_reader  # noqa: E402
from tests.qtest_guest import (  # noqa: E402
    C,
    Qtest,
    VirtioCryptodev,
    create_chain,
    crypt_chain,
    open_chain,
)

SIZES = (64, 1024)
BATCH = 24  # chains of 5 descriptors in a 128-entry ring


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=4000, help="per step and size")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    load = os.getloadavg()[0]

    from cdev.vm import qemu_build

    tmp = Path(tempfile.mkdtemp(prefix="cdev-tcost-"))
    qemus = []
    for name in ("control", "traced"):
        sock, log = tmp / f"{name}.sock", tmp / f"{name}.log"
        qemus.append(
            Qtest(
                qemu_build.ensure_qemu(),
                qemu_build.firmware_dirs(),
                [
                    "-device",
                    "virtio-cryptodev-pci",
                    "-qmp",
                    f"unix:{sock},server=on,wait=off",
                    "-D",
                    str(log),
                    "-msg",
                    "timestamp=on",
                ],
            )
        )
    sock = tmp / "traced.sock"
    cpu: dict[str, dict[int, list[float]]] = {}
    reader_cpu, traced = 0.0, 0
    try:
        devs = [VirtioCryptodev(qt) for qt in qemus]
        chains = []
        for dev in devs:
            handle = dev.call(open_chain()).resp[1]
            ses = dev.call(create_chain(handle, C["VCD_CIPHER_AES_CBC"], bytes(16))).resp[2]
            chains.append(
                {
                    s: [crypt_chain(handle, ses, 0, bytes(16), os.urandom(s)) for _ in range(BATCH)]
                    for s in SIZES
                }
            )

        def step(i: int, size: int, kind: str, live: subprocess.Popen[bytes] | None) -> float:
            nonlocal reader_cpu, traced
            start = cpu_seconds(qemus[i].proc.pid)
            rstart = cpu_seconds(live.pid) if live else 0.0
            for _ in range(args.requests // BATCH):
                devs[i].submit(chains[i][size])
            used = cpu_seconds(qemus[i].proc.pid) - start
            n: int = args.requests // BATCH * BATCH
            if live:
                reader_cpu += cpu_seconds(live.pid) - rstart
                traced += n
            cpu.setdefault(kind, {}).setdefault(size, []).append(used / n * 1e6)
            return used / n

        ratios: dict[str, dict[int, list[float]]] = {"on": {}, "off": {}}
        live: subprocess.Popen[bytes] | None = None
        for kind in ["off", "on"] * args.rounds:
            if kind == "on" and live is None:
                live = start_reader(str(sock), {**os.environ, "CDEV_RUN_DIR": str(tmp / "run")})
            elif kind != "on" and live is not None:
                stop_reader(live)
                live = None
            for size in SIZES:
                control = step(0, size, "control", None)
                ratios[kind].setdefault(size, []).append(step(1, size, kind, live) / control)
        if live is not None:
            stop_reader(live)
    finally:
        for qt in qemus:
            qt.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in cpu.items()}
    rat = {k: {s: statistics.median(v) for s, v in d.items()} for k, d in ratios.items()}
    lines = [
        "## The device alone (qtest)",
        "",
        f"`bench/trace_cost_device.py`, {time.strftime('%Y-%m-%d')}, {_cpu_model()}, "
        f"{os.cpu_count()} cores shared (load average {load:.1f} at start). QEMU under the "
        f"qtest accelerator, our device, batches of {BATCH} AES-128-CBC requests, "
        f"{args.requests} requests per step and size, {args.rounds} alternations of `off`/`on`, "
        "each step right after one of the never-attached control QEMU. QEMU CPU (user + "
        "system) per request, median; the ratios are medians of each step over the control "
        "step just before it. It includes the qtest protocol (the host program writing the "
        "chains into guest memory as text), so the device's own share is smaller still. The live "
        f"reader used {reader_cpu / max(traced, 1) * 1e6:.0f} µs of CPU per traced request.",
        "",
        "| size | control µs CPU/request | off | off vs control | on | on vs control |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SIZES:
        b, off, on = med["control"][s], med["off"][s], med["on"][s]
        lines.append(
            f"| {s} | {b:.1f} | {off:.1f} | {100 * (rat['off'][s] - 1):+.1f} % | {on:.1f} | "
            f"{100 * (rat['on'][s] - 1):+.1f} % |"
        )
    raw = json.dumps({"cpu": cpu, "ratios": ratios}, indent=1)
    lines += ["", "Raw samples (µs of QEMU CPU per request per step; ratios to control):"]
    lines += ["", "```", raw, "```", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()

"""CIOCASYNCCRYPT / CIOCASYNCFETCH in the guest, through our device (kernel/tests/async.c).

Many requests in flight from one fd, fetched after ``poll()``, checked byte by byte
against pyca/cryptography; the per-file budget and ``poll()``'s bits; files closed and
processes killed with requests in flight, many times over, after which neither side
holds anything: no host handle, session or QEMU fd, no guest request, pinned page or
memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cdev.device_state import host_state
from tests.vm.test_frontend import assert_console_clean, qemu_fds

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
SIZES = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
# 1,000 in CI as the issue asks; the leak cycles scale with CDEV_ASYNC_CYCLES (1,000 by hand).
CYCLES = int(os.environ.get("CDEV_ASYNC_CYCLES", "100"))


def _pattern(n: int, seed: int) -> bytes:
    period = bytes((j * 7 + seed) & 0xFF for j in range(256))
    return (period * (n // 256 + 1))[:n]


def _cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def expected_inflight(n: int) -> bytes:
    """What ``async inflight n`` writes: each cipher request's dst in order, then the digest."""
    key, chain_key = _pattern(16, 1), _pattern(16, 2)
    chain_chunks: list[bytes] = []
    hashed = hashlib.sha256()
    plan: list[tuple[int, bytes]] = []  # (kind, data)
    for i in range(n):
        kind, data = i % 4, _pattern(SIZES[(i // 4) % 8], i)
        plan.append((kind, data))
        if kind == 2:
            chain_chunks.append(data)
        elif kind == 3:
            hashed.update(data)
    chained = _cbc(chain_key, _pattern(16, 3), b"".join(chain_chunks))
    out, pos = [], 0
    for i, (kind, data) in enumerate(plan):
        if kind in (0, 1):
            out.append(_cbc(key, _pattern(16, 100 + i), data))
        elif kind == 2:
            out.append(chained[pos : pos + len(data)])
            pos += len(data)
    out.append(hashed.digest())
    return b"".join(out)


@pytest.fixture(scope="module")
def client(guest: Any) -> Path:
    binary = Path(guest.shared_dir) / "async"
    build = subprocess.run(
        ["cc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
         str(ROOT / "kernel" / "tests" / "async.c")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return binary


def _run(guest: Any, *args: object, timeout: float = 600) -> str:
    res = guest.run([str(a) for a in args], timeout=timeout)
    assert res.status == 0, res
    return str(res.stdout)


def _guest_counts(guest: Any) -> dict[str, int]:
    d = "/sys/class/virtio-cryptodev/cryptodev0/stats"
    out = _run(guest, "sh", "-c", f"cd {d} && for f in *; do echo $f $(cat $f); done")
    counts = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    # Caches dropped first: what is left is what someone holds.
    drop = "sync; echo 3 >/proc/sys/vm/drop_caches"
    vm = _run(guest, "sh", "-c", f"{drop}; cat /proc/vmstat /proc/meminfo")
    for key in ("nr_foll_pin_acquired", "nr_foll_pin_released", "MemAvailable:", "SUnreclaim:"):
        m = re.search(rf"^{key}\s+(\d+)", vm, re.M)
        assert m, key
        counts[key.rstrip(":")] = int(m.group(1))
    return counts


def _host_counts(guest: Any) -> tuple[int, int, int]:
    (dev,) = host_state(guest.qmp_socket)
    return len(dev.handles), dev.session_count, dev.in_flight


def test_1000_in_flight_from_one_fd_all_correct_in_order(guest: Any, client: Path) -> None:
    out = Path(guest.shared_dir) / "async-out.bin"
    line = _run(guest, client, "inflight", 1000, out)
    assert re.fullmatch(r"inflight 1000 order_bad 0 poll_waits \d+\n", line), line
    got, want = out.read_bytes(), expected_inflight(1000)
    assert len(got) == len(want)
    bad = next((i for i in range(0, len(want), 16) if got[i : i + 16] != want[i : i + 16]), None)
    assert bad is None, f"first wrong block at byte {bad}"
    assert_console_clean(guest)


def test_budget_and_poll_bits(guest: Any, client: Path) -> None:
    out = _run(guest, client, "budget").splitlines()
    assert out == [
        "budget accepted 1024 refused Device or resource busy fetched 1024",
        "poll empty in=0 out=1",
        "poll full in=1 out=0",
        "poll after in=1 out=1",
        "no_zc Invalid argument",
    ]


def test_close_and_kill_with_requests_in_flight_leak_nothing(guest: Any, client: Path) -> None:
    _run(guest, client, "close", 3, 64)  # warm up whatever either side allocates lazily
    fds, guest_before = qemu_fds(guest), _guest_counts(guest)
    _run(guest, client, "close", CYCLES, 64, timeout=3600)
    _run(guest, client, "kill", CYCLES, 64, timeout=3600)
    # Everything was answered and freed: the host holds nothing for the guest.
    assert _host_counts(guest) == (0, 0, 0)
    after = _guest_counts(guest)
    assert after["in_flight"] == 0 and after["open_files"] == 0 and after["sessions"] == 0
    assert after["nr_foll_pin_acquired"] - guest_before["nr_foll_pin_acquired"] > 0
    assert after["nr_foll_pin_released"] == after["nr_foll_pin_acquired"]
    # Memory back within noise (kB): our kmallocs are unreclaimable slab, our copies
    # pages; by hand, 400 kill cycles left both flat while MemAvailable swung by 20 MB.
    assert after["SUnreclaim"] - guest_before["SUnreclaim"] < 2048, (guest_before, after)
    assert guest_before["MemAvailable"] - after["MemAvailable"] < 32 * 1024, (guest_before, after)
    assert qemu_fds(guest) <= fds
    _run(guest, client, "inflight", 40, Path(guest.shared_dir) / "async-after.bin")
    assert_console_clean(guest)


def test_suspend_with_requests_in_flight(guest: Any, client: Path) -> None:
    """Freeze and restore (as the PM core runs them) while 200 requests are in flight
    and another process crypts in a loop: each request is answered correctly or fails
    with ENODEV, files from before get EBADF and never reach the device again, a new
    file works, and neither side keeps anything."""
    script = (
        "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
        f"exec {client} suspend /sys/kernel/debug/virtio-cryptodev/cryptodev0/suspend 200"
    )
    out = _run(guest, "sh", "-c", script).splitlines()
    m = re.fullmatch(r"fetched ok (\d+) failed (\d+) wrong 0", out[0])
    assert m and int(m[1]) + int(m[2]) == 200, out
    key, iv, src = _pattern(16, 1), _pattern(16, 77), _pattern(16, 1)
    assert out[1:3] == ["old file Bad file descriptor", f"new file {_cbc(key, iv, src)[:4].hex()}"]
    # The child's loop fails during the freeze (ENODEV) or after it (EBADF), then EBADF.
    first = "(No such device|Bad file descriptor)"
    assert re.fullmatch(rf"child done [1-9]\d* first {first} then Bad file descriptor", out[3])
    assert _host_counts(guest) == (0, 0, 0)
    after = _guest_counts(guest)
    assert after["in_flight"] == 0 and after["open_files"] == 0 and after["sessions"] == 0
    assert_console_clean(guest)

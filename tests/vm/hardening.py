"""Shared by the hardening proofs (test_stress.py, test_hotplug.py): the guest workload
kernel/tests/stress.c, its known answers, and the checks that nothing leaked or broke.

The workload prints ``ref NAME FNV64`` lines (its reference answers, computed through the
device) and ends with one JSON line of counts; :func:`expected_refs` computes the same
digests in software.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from cdev.device_state import host_state
from cdev.vm.guest import Guest

ROOT = Path(__file__).resolve().parents[2]
STRESS_C = ROOT / "kernel" / "tests" / "stress.c"
MAX_LEN = 256 * 1024
SYSFS_STATS = "/sys/class/virtio-cryptodev/cryptodev0/stats"
# Kernel messages that mean the guest broke: oopses, warnings, lockups, hung tasks, list
# and refcount corruption; and our module's own complaints about undoing state.
BAD_KERNEL_LINES = re.compile(
    r"BUG:|Oops|WARNING:|general protection|Call Trace|blocked for more than|"
    r"refcount_t:|list_add corruption|list_del corruption|soft lockup|hard LOCKUP|"
    r"undoing an orphaned|closing handle \d+ failed|short answer"
)
# The guest's hung-task detector must fire long before any test timeout.
KERNEL_ARGS = ("sysctl.kernel.hung_task_timeout_secs=30",)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def build_stress(share: Path) -> Path:
    binary = share / "stress"
    build = subprocess.run(
        ["cc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
         str(STRESS_C)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return binary


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def _fnv(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def expected_refs() -> dict[str, str]:
    """stress.c's reference digests, computed with pyca/cryptography and hashlib."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    plain, iv, aad = _pattern(MAX_LEN, 3), _pattern(16, 2), _pattern(20, 10)
    # (name, index in stress.c's algs[], key length, mode)
    ciphers = [
        ("aes-128-cbc", 0, 16, modes.CBC(iv)), ("aes-256-cbc", 1, 32, modes.CBC(iv)),
        ("aes-128-ctr", 2, 16, modes.CTR(iv)), ("aes-192-ecb", 3, 24, modes.ECB()),
        ("aes-256-xts", 4, 64, modes.XTS(iv)),
    ]  # fmt: skip
    out: dict[str, str] = {}
    for name, idx, keylen, mode in ciphers:
        key = _pattern(keylen, 20 + idx)
        enc = Cipher(algorithms.AES(key), mode).encryptor()
        out[name] = _fnv(enc.update(plain) + enc.finalize())
    hmac_key = _pattern(40, 20 + 6)
    for n in (1, 16, 64, 1000, 4096, 4097, 65536, MAX_LEN):
        out[f"sha256-{n}"] = _fnv(hashlib.sha256(plain[:n]).digest())
        out[f"hmac-sha256-{n}"] = _fnv(hmac.new(hmac_key, plain[:n], "sha256").digest())
    gcm = AESGCM(_pattern(16, 20 + 7))
    for n in (16, 300, 4096, 65536, MAX_LEN - 16):
        out[f"aes-128-gcm-{n}"] = _fnv(gcm.encrypt(iv[:12], plain[:n], aad))
    return out


def parse_stress(stdout: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(the ``ref`` lines as name -> digest, the final JSON counts)."""
    refs = {}
    for line in stdout.splitlines():
        if line.startswith("ref "):
            _, name, digest = line.split()
            refs[name] = digest
    lines = stdout.strip().splitlines()
    counts: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return refs, counts


def qemu_fds(g: Guest) -> dict[int, str]:
    """QEMU's open descriptors and what they are."""
    d = f"/proc/{g.qemu_pid}/fd"
    out = {}
    for name in os.listdir(d):
        with contextlib.suppress(OSError):  # closed meanwhile
            out[int(name)] = os.readlink(f"{d}/{name}")
    return out


def assert_no_fd_growth(g: Guest, before: dict[int, str], timeout: float = 15.0) -> None:
    """QEMU holds no more descriptors than ``before``; waits a little, since a QMP
    connection we just closed may still be open on QEMU's side."""
    deadline = time.monotonic() + timeout
    while True:
        now = qemu_fds(g)
        if len(now) <= len(before):
            return
        if time.monotonic() > deadline:
            new = {k: v for k, v in now.items() if before.get(k) != v}
            raise AssertionError(f"QEMU's descriptors grew {len(before)} -> {len(now)}: {new}")
        time.sleep(0.5)


def guest_counters(g: Guest) -> dict[str, int]:
    res = g.run(f"cd {SYSFS_STATS} && for f in *; do echo $f $(cat $f); done", timeout=60)
    assert res.status == 0, res.stderr
    return {k: int(v) for k, v in (line.split() for line in res.stdout.splitlines())}


def both_sides(g: Guest) -> dict[str, Any]:
    """Open files/handles and sessions as the guest module and the host device count them."""
    guest = guest_counters(g)
    (host,) = host_state(g.qmp_socket)
    return {
        "guest": (guest["open_files"], guest["sessions"], guest["in_flight"]),
        "host": (len(host.handles), host.session_count, host.in_flight),
    }


def wait_sides_equal(g: Guest, timeout: float = 60.0) -> dict[str, Any]:
    """Poll until nothing is in flight and both sides count the same handles and sessions
    (a killed waiter's session is undone by a work item a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        s = both_sides(g)
        if s["guest"] == s["host"] and s["guest"][2] == 0:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"guest and host disagree after {timeout:.0f} s: {s}")
        time.sleep(0.5)


def assert_kernel_clean(g: Guest) -> None:
    """Nothing bad on the console log nor in dmesg (which also has what the quiet
    console level filters out)."""
    console = Path(g.console_log).read_text(errors="replace")
    res = g.run("dmesg", timeout=60)
    assert res.status == 0, res.stderr
    for where, log in (("console", console), ("dmesg", res.stdout)):
        bad = [ln for ln in log.splitlines() if BAD_KERNEL_LINES.search(ln)]
        assert not bad, f"{where}: " + "\n".join(bad[:20]) + f"\n...\n{log[-3000:]}"

"""Many processes, mixed requests, random SIGKILLs: the guest module and the device must
give only right answers, leak nothing on either side, and log nothing bad.

The workload is kernel/tests/stress.c (static C: 32 processes keep 32 requests in flight,
which a Python client in the TCG guest could not). CI runs ``CDEV_STRESS_OPS``
operations per process (default 4,000: the file took 85 s here); the full proof is
``CDEV_STRESS_OPS=10000`` by hand (docs/hardening.md).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator

import pytest

from cdev.vm.guest import Guest
from tests.vm.hardening import (
    KERNEL_ARGS,
    assert_kernel_clean,
    assert_no_fd_growth,
    build_stress,
    env_int,
    expected_refs,
    parse_stress,
    qemu_fds,
    wait_sides_equal,
)
from tests.vm.own_guest import own_guest

pytestmark = pytest.mark.vm

PROCS = env_int("CDEV_STRESS_PROCS", 32)
OPS = env_int("CDEV_STRESS_OPS", 4000)
KILL_MS = env_int("CDEV_STRESS_KILL_MS", 100)  # mean time between SIGKILLs


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    # Its own guest (these tests are destructive), hung tasks reported after 30 s.
    with own_guest(kernel_args=KERNEL_ARGS) as g:
        yield g


def _say(text: str) -> None:
    sys.stderr.write(f"stress: {text}\n")


def test_references_match_software(guest: Guest) -> None:
    binary = build_stress(guest.shared_dir)
    res = guest.run([str(binary), "-r"], timeout=300)
    assert res.status == 0, res
    refs, _ = parse_stress(res.stdout)
    assert refs == expected_refs()


# pytest-timeout: ~1,600 operations/s here, allow for a machine 10 times as loaded.
@pytest.mark.timeout(600 + PROCS * OPS // 150)
def test_processes_with_random_kills(guest: Guest) -> None:
    binary = build_stress(guest.shared_dir)
    guest.run([str(binary), "-p", "4", "-o", "20"], timeout=600, check=True)  # warm up
    wait_sides_equal(guest)
    fds = qemu_fds(guest)
    t0 = time.monotonic()
    args = [str(binary), "-p", str(PROCS), "-o", str(OPS), "-k", str(KILL_MS)]
    res = guest.run(args, timeout=600 + PROCS * OPS // 160)
    took = time.monotonic() - t0
    refs, counts = parse_stress(res.stdout)
    _say(f"{' '.join(args[1:])}: {took:.1f} s, {counts}")
    assert res.status == 0, f"{counts}\n{res.stderr[-3000:]}"
    assert refs == expected_refs()
    assert counts["ops"] == counts["target"] == PROCS * OPS
    assert counts["mismatches"] == counts["errors"] == counts["crashes"] == 0
    assert counts["stuck"] == 0
    if KILL_MS:
        assert counts["kills"] > 0 and counts["kills_mid_request"] > 0, counts
    # All workers gone: nothing left open on either side, once the killed waiters'
    # orphaned creations are undone.
    sides = wait_sides_equal(guest)
    assert sides["guest"] == sides["host"] == (0, 0, 0)
    assert_no_fd_growth(guest, fds)
    assert_kernel_clean(guest)


def test_frozen_workload_counts_agree(guest: Guest) -> None:
    """Mid-run, with every worker stopped: host handles and sessions equal the guest's."""
    binary = build_stress(guest.shared_dir)
    proc = guest.spawn([str(binary), "-p", "8", "-o", "0", "-k", "200"], timeout=900)
    try:
        time.sleep(20)
        # Stop the killer first, then its workers: each stops once its request is answered.
        parent = proc.pid
        res = guest.run(f"kill -STOP {parent}; sleep 0.5; kill -STOP $(pgrep -P {parent})")
        assert res.status == 0, res
        sides = wait_sides_equal(guest)
        assert sides["guest"][0] > 0 and sides["guest"][1] > 0, sides
        guest.run(f"kill -CONT $(pgrep -P {parent}); kill -CONT {parent}", timeout=60)
        time.sleep(5)
        assert proc.poll() is None, proc.wait(10)
    finally:
        proc.send_signal(signal.SIGTERM)
    out = proc.wait(timeout=300)
    refs, counts = parse_stress(out.stdout)
    assert refs == expected_refs()
    assert out.status == 0, f"{counts}\n{out.stderr[-3000:]}"
    assert counts["mismatches"] == counts["errors"] == counts["crashes"] == counts["stuck"] == 0
    assert counts["ops"] > 0
    assert wait_sides_equal(guest)["host"] == (0, 0, 0)
    assert_kernel_clean(guest)

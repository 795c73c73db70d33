"""Hot-unplug and replug of the device over QMP while guest processes are crypting.

Open files must see ENODEV (no hang, no crash), the guest must log nothing bad, the node
must come back after every ``device_add`` and new opens work; QEMU must not leak
descriptors nor keep handles. CI runs ``CDEV_HOTPLUG_CYCLES`` cycles (default 10); the
proof of docs/hardening.md is 1,000 by hand.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator

import pytest

from cdev.device_state import host_state
from cdev.qmp import Qmp, QmpError
from cdev.vm.guest import CRYPTODEV_ID, Guest
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

CYCLES = env_int("CDEV_HOTPLUG_CYCLES", 10)
PROCS = env_int("CDEV_HOTPLUG_PROCS", 8)
KILL_MS = env_int("CDEV_HOTPLUG_KILL_MS", 300)  # SIGKILLs meanwhile (0: none)


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    # Its own guest (these tests are destructive), hung tasks reported after 30 s.
    with own_guest(kernel_args=KERNEL_ARGS) as g:
        yield g


def _say(text: str) -> None:
    sys.stderr.write(f"hotplug: {text}\n")


def _present(g: Guest) -> bool:
    with Qmp(g.qmp_socket) as q:
        return any(p.get("name") == CRYPTODEV_ID for p in q.qom_list("/machine/peripheral"))


def _crypt_once(g: Guest) -> None:
    """A fresh open and a known answer through the node (the workload's references)."""
    binary = build_stress(g.shared_dir)
    res = g.run([str(binary), "-r"], timeout=300)
    assert res.status == 0, res
    assert parse_stress(res.stdout)[0] == expected_refs()


def _wait_serving(g: Guest, cycle: int, timeout: float = 60.0) -> None:
    """The re-added device (its counters start at zero) has opened files and answered
    crypts for the workers: new opens work, requests are in flight again."""
    deadline = time.monotonic() + timeout
    while True:
        (dev,) = host_state(g.qmp_socket)
        if dev.requests["open"] > 0 and dev.crypt_bytes > 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cycle {cycle}: nothing served after replug: {dev}")
        time.sleep(0.1)


def test_unplug_and_plug_api(guest: Guest) -> None:
    """The harness calls on their own: the device leaves QEMU and the guest, and comes back."""
    assert _present(guest)
    took = guest.unplug_device()
    assert not _present(guest)
    res = guest.run("ls /dev/cryptodev* /sys/class/virtio-cryptodev/ 2>&1", timeout=60)
    assert "/dev/cryptodev0" not in res.stdout.split(), res.stdout
    with pytest.raises(QmpError, match="not found"):
        guest.unplug_device(timeout=5)  # nothing left to unplug: QEMU says so
    took += guest.plug_device()
    assert _present(guest)
    _crypt_once(guest)
    assert (host_state(guest.qmp_socket)[0].handles) == []
    _say(f"one cycle idle: {took:.1f} s")
    assert_kernel_clean(guest)


# pytest-timeout: a cycle takes 1-2 s here, far more on a loaded machine.
@pytest.mark.timeout(600 + 10 * CYCLES)
def test_cycles_with_requests_in_flight(guest: Guest) -> None:
    binary = build_stress(guest.shared_dir)
    _crypt_once(guest)  # QEMU's lazily opened descriptors are there before we count
    fds = qemu_fds(guest)
    args = [str(binary), "-u", "-p", str(PROCS), "-o", "0", "-k", str(KILL_MS)]
    proc = guest.spawn(args, timeout=None)
    t0 = time.monotonic()
    unplug_s: list[float] = []
    plug_s: list[float] = []
    try:
        time.sleep(3)  # the workers are crypting
        for i in range(CYCLES):
            unplug_s.append(guest.unplug_device())
            assert proc.poll() is None, f"cycle {i}: workload ended: {proc.wait(10)}"
            plug_s.append(guest.plug_device())
            _wait_serving(guest, i)
            if (i + 1) % max(1, CYCLES // 10) == 0:
                _say(f"{i + 1} cycles, {time.monotonic() - t0:.0f} s")
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGTERM)
    res = proc.wait(timeout=300)
    took = time.monotonic() - t0
    refs, counts = parse_stress(res.stdout)
    _say(
        f"{CYCLES} cycles, {PROCS} processes: {took:.1f} s; unplug max "
        f"{max(unplug_s):.2f} s, plug max {max(plug_s):.2f} s; {counts}"
    )
    assert res.status == 0, f"{counts}\n{res.stderr[-3000:]}"
    assert refs == expected_refs()
    # Every worker saw the device go (ENODEV) and came back to it; no other error, no
    # wrong answer, nobody stuck in the kernel.
    assert counts["mismatches"] == counts["errors"] == counts["crashes"] == counts["stuck"] == 0
    assert counts["enodev"] >= CYCLES, counts
    assert counts["reopens"] >= PROCS + CYCLES, counts
    sides = wait_sides_equal(guest)
    assert sides["guest"] == sides["host"] == (0, 0, 0)
    _crypt_once(guest)
    assert_no_fd_growth(guest, fds)
    assert_kernel_clean(guest)

"""``vq-trace --attach`` and ``session list --attach`` on a QEMU cdev did not start.

QEMU runs under the qtest accelerator (no guest boots: :mod:`tests.qtest_guest` plays the
guest) with a QMP socket of its own, no ``-D`` log and no timestamps, as a user's QEMU
might: attaching must point QEMU's log at a file of its own, and still count exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdev.device_state import host_state
from cdev.qmp import Qmp, QmpError, process_alive
from cdev.vm import qemu_build
from tests.qtest_guest import Qtest, VirtioCryptodev, close_chain, open_chain

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def qemu() -> Iterator[tuple[Qtest, Path]]:
    tmp = tempfile.mkdtemp(prefix="cdev-qmp-")
    sock = Path(tmp) / "qmp.sock"
    qt = Qtest(
        qemu_build.ensure_qemu(),
        qemu_build.firmware_dirs(),
        ["-device", "virtio-cryptodev-pci", "-qmp", f"unix:{sock},server=on,wait=off"],
    )
    try:
        yield qt, sock
    finally:
        qt.close()
        sock.unlink(missing_ok=True)
        os.rmdir(tmp)


def test_attach_to_a_foreign_qemu(qemu: tuple[Qtest, Path], tmp_path: Path) -> None:
    qt, sock = qemu
    dev = VirtioCryptodev(qt)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdev", "vq-trace", "--attach", str(sock), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "CDEV_RUN_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.stderr is not None
    assert "attached to" in proc.stderr.readline()
    assert "QEMU's log now goes to" in proc.stderr.readline()
    handles = [d.resp[1] for d in dev.submit([open_chain() for _ in range(5)])]
    # While attached, the device's own view over QMP (the live view holds no connection).
    state = host_state(sock)[0]
    assert sorted(h.id for h in state.handles) == sorted(handles)
    assert state.requests["open"] == 5 and state.in_flight == 0
    dev.submit([close_chain(h) for h in handles] + [close_chain(0x999)])
    time.sleep(1.0)  # the log is flushed per line; give the reader a poll or two
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = [json.loads(line) for line in out.splitlines()]
    calls = rows[-1]["summary"]["calls"]
    assert calls["OPEN"]["count"] == 5 and calls["CLOSE"]["count"] == 6
    assert calls["CLOSE"]["errors"] == 1
    # No -msg timestamp=on: rows are stamped on arrival, latency unknown.
    assert all(r["time"] is not None and r["latency_us"] is None for r in rows[:-1])
    assert {r["chain"] for r in rows[:-1] if r["request"] == "OPEN"} == {"1+1 48/16B"}
    with Qmp(sock) as q:
        assert set(q.trace_states("virtio_cryptodev_*").values()) == {False}
    assert host_state(sock)[0].handles == []


def test_one_qmp_client_at_a_time_is_an_error_not_a_hang(qemu: tuple[Qtest, Path]) -> None:
    _, sock = qemu
    with Qmp(sock) as q:
        q.execute("query-status")
        t0 = time.monotonic()
        with pytest.raises(QmpError, match="another client"):
            Qmp(sock, timeout=2).connect()
        assert time.monotonic() - t0 < 10
    with Qmp(sock) as q:  # free again
        assert q.execute("query-status")["status"] in ("running", "paused", "prelaunch")


def test_zombies_are_not_alive() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # exited, not reaped: a zombie
    assert os.path.exists(f"/proc/{child.pid}") and not process_alive(child.pid)
    child.wait()
    assert process_alive(os.getpid())


def test_live_table_duration_and_plot(qemu: tuple[Qtest, Path], tmp_path: Path) -> None:
    qt, sock = qemu
    dev = VirtioCryptodev(qt)
    png = tmp_path / "live.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdev", "vq-trace", "--attach", str(sock), "--duration", "4",
         "--filter", "call=OPEN", "--plot-out", str(png)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "CDEV_RUN_DIR": str(tmp_path), "COLUMNS": "160"},
    )  # fmt: skip
    assert proc.stderr is not None
    assert "attached to" in proc.stderr.readline()
    handles = [d.resp[1] for d in dev.submit([open_chain() for _ in range(3)])]
    dev.submit([close_chain(h) for h in handles])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # --duration ran out: a normal end
    assert "per call" in out and "OPEN" in out and "CLOSE" not in out
    assert png.read_bytes()[:4] == b"\x89PNG"

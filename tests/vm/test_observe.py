"""Watching the device at work from outside: ``cdev vq-trace --attach`` on a running guest.

One guest of its own, booted with the device's trace events off (as a user's would be):
attaching switches them on over QMP, detaching back off. A known workload in the guest
(:mod:`tests.vm.observe_workload`) must show up exactly: requests per call, bytes, errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdev.device_state import host_state
from cdev.qmp import Qmp
from cdev.vm.channel import GuestError
from cdev.vm.guest import Guest, GuestProcess
from cdev.vq_live import Attachment, resolve
from tests.vm import observe_workload as workload
from tests.vm.own_guest import own_guest

pytestmark = pytest.mark.vm

WORKLOAD = Path(workload.__file__).resolve()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    with own_guest() as g:
        yield g


def _cdev(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cdev", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kw,
    )


class LiveTrace:
    """``cdev vq-trace --attach NAME --json`` running on the host, its lines collected."""

    def __init__(self, name: str, *extra: str) -> None:
        self.proc = _cdev("vq-trace", "--attach", name, "--json", *extra)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        first = self.proc.stderr.readline()
        assert "attached to" in first, first + self.proc.stderr.read()
        self.rows: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.rows.append(json.loads(line))

    def wait_for(self, request: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(r.get("request") == request for r in self.rows) >= count:
                return
            time.sleep(0.2)
        raise AssertionError(f"saw {request} fewer than {count} times")

    def abandon(self) -> None:
        """Detach if still attached (a failed test must not leave the trace events on for
        the next test on this guest)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> tuple[int, dict[str, Any], str]:
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return status, self.rows[-1]["summary"], err


def _states(g: Guest) -> set[bool]:
    with Qmp(g.qmp_socket) as q:
        return set(q.trace_states("virtio_cryptodev_*").values())


def _start_known(g: Guest) -> GuestProcess:
    (g.shared_dir / "holding.json").unlink(missing_ok=True)
    return g.spawn(
        [sys.executable, str(WORKLOAD), "known", str(g.shared_dir)], keep_stdin=True, timeout=600
    )


def _end_known(proc: GuestProcess) -> None:
    """Let a workload still holding its sessions go (a failed test's)."""
    if proc.poll() is None:
        proc.write("done\n")
        with contextlib.suppress(GuestError):  # on a timeout the agent kills it
            proc.wait(timeout=120)


def _holding(g: Guest, proc: GuestProcess) -> dict[str, Any]:
    marker = g.shared_dir / "holding.json"
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"workload did not get going: {proc.wait(10)}")
        time.sleep(0.2)
    state: dict[str, Any] = json.loads(marker.read_text())
    return state


def _calls(summary: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        name: {k: d[k] for k in ("count", "errors", "bytes")}
        for name, d in summary["calls"].items()
        if name != "total"
    }


def _host_list(g: Guest) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "cdev", "session", "list", "--attach", g.name, "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    devices = json.loads(res.stdout)["devices"]
    assert len(devices) == 1
    return dict(devices[0])


def _guest_list(g: Guest) -> dict[str, Any]:
    res = g.run(["cdev", "session", "list", "--json"], timeout=300)
    assert res.status == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["side"] == "guest" and len(out["devices"]) == 1
    return dict(out["devices"][0])


def _guest_counters(g: Guest) -> dict[str, int]:
    d = "/sys/class/virtio-cryptodev/cryptodev0/stats"
    res = g.run(f"cd {d} && for f in *; do echo $f $(cat $f); done", timeout=60)
    assert res.status == 0, res.stderr
    return {k: int(v) for k, v in (line.split() for line in res.stdout.splitlines())}


def test_known_workload_seen_exactly_through_attach(
    guest: Guest, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert _states(guest) == {False}
    host_before = host_state(guest.qmp_socket)[0]
    guest_before = _guest_counters(guest)
    log_start = guest.trace_log.stat().st_size if guest.trace_log.exists() else 0
    live = LiveTrace(guest.name)
    request.addfinalizer(live.abandon)
    assert _states(guest) == {True}
    proc = _start_known(guest)
    request.addfinalizer(lambda: _end_known(proc))
    state = _holding(guest, proc)
    assert state["bad"] == 0

    # What is open now, from both sides, while the workload holds it (and the live view
    # stays attached: it holds no QMP connection meanwhile).
    host = _host_list(guest)
    ids = state["sessions"]
    assert host["open_handles"] == workload.MAIN_OPENS and host["open_sessions"] == len(ids)
    sessions = {s["id"]: s for h in host["handles"] for s in h["sessions"]}
    assert set(sessions) == set(ids.values())
    per_session = {
        name: (len(c), sum(n for _, _, n in c))
        for name in ids
        for c in [[x for x in workload.CRYPTS if x[0] == name]]
    }
    for name, sid in ids.items():
        assert (sessions[sid]["requests"], sessions[sid]["bytes"]) == per_session[name]
    assert sessions[ids["C"]]["algorithm"] == "aes-cbc+hmac-sha256"
    seen_by_guest = _guest_list(guest)
    assert seen_by_guest["open_files"] == host["open_handles"]
    assert seen_by_guest["sessions"] == host["open_sessions"]
    assert seen_by_guest["in_flight"] == 0

    proc.write("done\n")
    res = proc.wait(timeout=120)
    assert res.status == 0, res.stderr
    want = workload.expected(state["fillers"])
    live.wait_for("CLOSE", want["CLOSE"]["count"])
    status, summary, err = live.stop()
    assert status == 130, err  # Ctrl-C ends a live view
    assert "detached, trace events restored" in err
    assert _states(guest) == {False}

    # Gone from both sides with the workload.
    host = _host_list(guest)
    assert host["open_handles"] == 0 and host["handles"] == []
    after = _guest_list(guest)
    assert (after["open_files"], after["sessions"], after["in_flight"]) == (0, 0, 0)

    assert _calls(summary) == want
    # The device's own counters and the guest module's moved by exactly as much.
    host_after = host_state(guest.qmp_socket)[0]
    total = sum(c["count"] for c in want.values())
    moved = {k: host_after.requests[k] - host_before.requests[k] for k in host_after.requests}
    assert moved == {
        "open": want["OPEN"]["count"],
        "close": want["CLOSE"]["count"],
        "session-create": want["SESSION_CREATE"]["count"],
        "session-destroy": want["SESSION_DESTROY"]["count"],
        "crypt": want["CRYPT/encrypt"]["count"] + want["CRYPT/decrypt"]["count"],
        "session-info": 0,
        "other": 0,
    }
    assert host_after.statuses["LIMIT"] - host_before.statuses["LIMIT"] == workload.FAILED_OPENS
    assert host_after.crypt_bytes - host_before.crypt_bytes == (
        want["CRYPT/encrypt"]["bytes"] + want["CRYPT/decrypt"]["bytes"]
    )
    guest_after = _guest_counters(guest)
    assert guest_after["completed"] - guest_before["completed"] == total
    assert guest_after["errors"] - guest_before["errors"] == workload.FAILED_OPENS
    assert summary["by_status"] == {"OK": sum(c["count"] for c in want.values()) - 2, "LIMIT": 2}
    rows = live.rows[:-1]
    refused = [r for r in rows if r["status_name"] == "LIMIT"]
    assert [r["request"] for r in refused] == ["OPEN", "OPEN"]
    crypts = [r for r in rows if r["request"].startswith("CRYPT")]
    algs = {r["session"]: r["algorithm"] for r in crypts}
    ids = state["sessions"]
    assert algs == {ids["A"]: "aes-cbc", ids["B"]: "hmac-sha256", ids["C"]: "aes-cbc+hmac-sha256"}
    assert all(r["latency_us"] is not None and r["latency_us"] >= 0 for r in rows)
    assert all(r["time"] is not None for r in rows)

    # The same log, replayed: the same totals.
    saved = tmp_path / "saved.log"
    with guest.trace_log.open("rb") as f:
        f.seek(log_start)
        saved.write_bytes(f.read())
    replay = subprocess.run(
        [sys.executable, "-m", "cdev", "vq-trace", "--from", str(saved), "--json", "--summary"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["summary"]["calls"] == summary["calls"]

    # A filter on the saved log: only the refused opens.
    only = subprocess.run(
        [sys.executable, "-m", "cdev", "vq-trace", str(saved), "--json", "--filter",
         "status=ERROR"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    lines = [json.loads(x) for x in only.stdout.splitlines()]
    assert [x["status_name"] for x in lines[:-1]] == ["LIMIT", "LIMIT"]


def test_attach_detach_100_times_leaves_results_correct(guest: Guest) -> None:
    for name in ("stop", "looping"):
        (guest.shared_dir / name).unlink(missing_ok=True)
    proc = guest.spawn([sys.executable, str(WORKLOAD), "loop", str(guest.shared_dir)], timeout=900)
    deadline = time.monotonic() + 300
    while not (guest.shared_dir / "looping").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.wait(10)
        time.sleep(0.2)
    target = resolve(guest.name)
    seen = 0
    for i in range(100):
        with Attachment(target) as att:
            if i % 10 == 0:  # now and then, read what came while attached
                time.sleep(0.3)
                seen += sum(1 for _ in att.lines(stop=lambda: True))
        assert _states(guest) == {False}, f"events left on after detach {i + 1}"
    (guest.shared_dir / "stop").write_text("")
    res = proc.wait(timeout=300)
    assert res.status == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["bad"] == 0 and result["ok"] > 0
    assert seen > 0


def test_guest_exit_ends_the_live_view(guest: Guest) -> None:
    live = LiveTrace(guest.name)
    assert live.proc.stderr is not None
    guest.close()  # QEMU goes away under the attached view
    status = live.proc.wait(timeout=60)
    err = live.proc.stderr.read()
    assert status == 0, err
    assert "QEMU exited" in err and "Traceback" not in err
    assert not os.path.exists(f"/proc/{live.proc.pid}")

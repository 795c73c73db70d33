"""The end-to-end tour behind ``cdev vm demo``: build, boot, and use the device for real.

Each step is checked, not just run: vectors through the device, a file encrypted in the
guest on ``virtio`` and decrypted on the host in ``software`` (and back), an encrypted chat
between the guest on ``virtio`` and the host on ``software`` through a forwarded port, and
the device's own trace of the traffic.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cdev.vm.guest import Guest
from cdev.vm.guest_kernel import ProgressFn
from cdev.vq_trace import Tracker, exchanges, read_lines

CHAT_PORT = 7000
PASSPHRASE = "demo: guest and host share this"


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float


def _cdev() -> list[str]:
    return [sys.executable, "-m", "cdev"]


def _host(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    env["CDEV_PASSPHRASE"] = PASSPHRASE
    return subprocess.run(
        [*_cdev(), *args], input=input, capture_output=True, env=env, timeout=600, check=False
    )


def _last_line(text: str | bytes) -> str:
    s = text.decode(errors="replace") if isinstance(text, bytes) else text
    lines = [ln for ln in s.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _selftest(g: Guest) -> tuple[bool, str]:
    res = g.run([*_cdev(), "session", "selftest", "--provider", "virtio", "--json"], timeout=600)
    if res.status:
        return False, _last_line(res.stderr) or f"exit {res.status}"
    results = json.loads(res.stdout)["virtio"]
    passed = sum(r["ok"] for r in results)
    failed = sum(r["status"] == "fail" for r in results)
    # Algorithms the device does not offer are reported unsupported, not failed.
    return failed == 0 and passed > 0, (
        f"{passed}/{len(results)} NIST/RFC vectors through the device, "
        f"{len(results) - passed - failed} unsupported, {failed} failed"
    )


def _files(g: Guest, size: int) -> tuple[bool, str]:
    share = g.shared_dir
    data = os.urandom(size)
    (share / "demo.bin").write_bytes(data)
    env = {"CDEV_PASSPHRASE": PASSPHRASE}
    res = g.run(
        [*_cdev(), "crypt", "encrypt", str(share / "demo.bin"), "-o", str(share / "g.cdev"),
         "--provider", "virtio", "--force"],
        timeout=900, env=env,
    )  # fmt: skip
    if res.status:
        return False, "guest encrypt: " + _last_line(res.stderr)
    proc = _host("crypt", "decrypt", str(share / "g.cdev"), "-o", str(share / "h.bin"), "--force")
    if proc.returncode or (share / "h.bin").read_bytes() != data:
        return False, "host decrypt: " + _last_line(proc.stderr)
    # Suite 1: the guest decrypts through the device, which may not offer AES-GCM.
    proc = _host(
        "crypt", "encrypt", str(share / "h.bin"), "-o", str(share / "h.cdev"), "--force",
        "--suite", "1",
    )  # fmt: skip
    if proc.returncode:
        return False, "host encrypt: " + _last_line(proc.stderr)
    res = g.run(
        [*_cdev(), "crypt", "decrypt", str(share / "h.cdev"), "-o", str(share / "g.bin"),
         "--provider", "virtio", "--force"],
        timeout=900, env=env,
    )  # fmt: skip
    if res.status or (share / "g.bin").read_bytes() != data:
        return False, "guest decrypt: " + _last_line(res.stderr)
    digest = hashlib.sha256(data).hexdigest()[:12]
    return True, (
        f"{size >> 20} MiB: guest(virtio) -> host(software) -> guest(virtio), sha256 {digest}…"
    )


def _wait_listening(g: Guest, port: int, timeout: float = 300) -> bool:
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = g.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", timeout=60).stdout
        if any(needle in ln and ln.split()[3] == "0A" for ln in out.splitlines()):
            return True
        time.sleep(0.5)
    return False


def _chat(g: Guest) -> tuple[bool, str]:
    listener = g.spawn(
        [*_cdev(), "chat", "listen", f"0.0.0.0:{CHAT_PORT}", "--encrypt", "--provider", "virtio",
         "--nick", "guest"],
        timeout=600, keep_stdin=True, env={"CDEV_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    if not _wait_listening(g, CHAT_PORT):
        listener.kill()
        return False, "the guest's listener never came up"
    listener.write("hello from the guest (virtio)\n")
    listener.close_stdin()
    host = _host(
        "chat", "connect", f"127.0.0.1:{g.host_port(CHAT_PORT)}", "--encrypt", "--nick", "host",
        input=b"hello from the host (software)\n",
    )  # fmt: skip
    res = listener.wait(timeout=300)
    heard_host = "hello from the host" in res.stdout
    heard_guest = b"hello from the guest" in host.stdout
    notices = (res.stderr + host.stderr.decode()).splitlines()
    fps = [ln.split("fingerprint", 1)[1].split()[0] for ln in notices if "fingerprint" in ln]
    ok = host.returncode == 0 and res.status == 0 and heard_host and heard_guest
    if not ok:
        return False, _last_line(host.stderr) or _last_line(res.stderr) or "messages lost"
    same = len(fps) == 2 and fps[0] == fps[1]
    return same, f"both ways through 127.0.0.1:{g.host_port(CHAT_PORT)}, fingerprint {fps[0]}"


def _trace(g: Guest) -> tuple[bool, str]:
    tracker = Tracker()
    for _ in exchanges(read_lines(g.trace_log), tracker):
        pass
    s = tracker.summary.as_dict()
    errors = {k: v for k, v in s["by_status"].items() if k != "OK"}
    ok = s["requests"] > 0 and s["pending"] == 0
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["by_request"].items()))
    return ok, (
        f"{s['requests']} requests ({kinds}); {s['crypt_bytes_ok'] >> 10} KiB crypted; "
        f"p50 {s['latency_us_p50']} µs; non-OK statuses: {errors or 'none'}"
    )


def run_demo(progress: ProgressFn, file_size: int = 8 << 20) -> list[Step]:
    steps: list[Step] = []

    def step(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        progress(name, None)
        t = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:  # a failed step is reported, and the tour goes on
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        steps.append(Step(name, ok, detail, time.monotonic() - t))

    t0 = time.monotonic()
    with Guest(ports=[(0, CHAT_PORT)], trace=("virtio_cryptodev_*",), progress=progress) as g:
        steps.append(
            Step(
                "build + boot",
                g.cryptodev and g.module is not None and not g.module_error,
                f"Debian {g.release}, {g.accel.upper()}, device "
                f"{'present' if g.cryptodev else 'MISSING'}, module "
                f"{g.module_error or 'loaded'}; guest ready {g.boot_seconds:.1f} s after start",
                time.monotonic() - t0,
            )
        )
        step("self-test in the guest", lambda: _selftest(g))
        step("file round trip", lambda: _files(g, file_size))
        step("encrypted chat guest <-> host", lambda: _chat(g))
        step("virtqueue trace", lambda: _trace(g))
    return steps

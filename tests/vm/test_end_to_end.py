"""cdev itself in the guest, through our device, against cdev on the host.

The guest runs the host's own Python and cdev (same paths over 9p); the crypto of
``--provider virtio`` is done by the QEMU backend on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from cdev.vm.guest import Guest
from tests.cli_helpers import CDEV, run_cdev

pytestmark = pytest.mark.vm

PASS = {"CDEV_PASSPHRASE": "shared between guest and host"}


def test_selftest_through_the_device_passes_every_vector_it_offers(guest: Guest) -> None:
    res = guest.run([CDEV, "session", "selftest", "--provider", "virtio", "--json"], timeout=600)
    assert res.status == 0, res.stderr
    results = json.loads(res.stdout)["virtio"]
    assert not [r for r in results if r["status"] == "fail"]
    # The device has always done AES-CBC and one-shot HMAC-SHA256: those must pass.
    for alg, ops in (("aes-cbc", 2 * 3), ("hmac-sha256", 7)):
        passed = [r for r in results if r["algorithm"] == alg and r["status"] == "pass"]
        assert len(passed) >= ops, (alg, [r for r in results if r["algorithm"] == alg])


def test_session_info_reports_the_host_engine(guest: Guest) -> None:
    res = guest.run([CDEV, "session", "info", "--provider", "virtio", "--json"], timeout=120)
    assert res.status == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["max_request"] == 256 * 1024
    assert info["sessions"]["aes-256-cbc"]["name"] == "cbc(aes)"
    assert info["sessions"]["aes-256-cbc"]["driver"], info


def test_afalg_provider_in_the_guest_kernel(guest: Guest) -> None:
    # This host kernel has no AF_ALG; the guest's has, so the afalg provider is proven here.
    res = guest.run([CDEV, "session", "selftest", "--provider", "afalg", "--json"], timeout=300)
    assert res.status == 0, res.stderr
    assert all(r["ok"] for r in json.loads(res.stdout)["afalg"])


@pytest.mark.parametrize("size", [0, 70_000, 1_000_003])
def test_crypt_guest_virtio_and_host_software_interoperate(guest: Guest, size: int) -> None:
    share = guest.shared_dir
    data = os.urandom(size)
    (share / "g.bin").write_bytes(data)
    # Guest encrypts through the device; the host decrypts in software.
    res = guest.run(
        [CDEV, "crypt", "encrypt", str(share / "g.bin"), "-o", str(share / "g.cdev"), "--force",
         "--provider", "virtio", "--work-factor", "10"],
        timeout=300, env=PASS,
    )  # fmt: skip
    assert res.status == 0, res.stderr
    out = share / "g.host"
    proc = run_cdev("crypt", "decrypt", str(share / "g.cdev"), "-o", str(out), "--force", env=PASS)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    # And the other way round (suite 1: the device may not offer AES-GCM).
    proc = run_cdev("crypt", "encrypt", str(out), "-o", str(share / "h.cdev"), "--force",
                    "--work-factor", "10", "--suite", "1", env=PASS)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = guest.run(
        [CDEV, "crypt", "decrypt", str(share / "h.cdev"), "-o", str(share / "h.guest"),
         "--force", "--provider", "virtio"],
        timeout=300, env=PASS,
    )  # fmt: skip
    assert res.status == 0, res.stderr
    assert (share / "h.guest").read_bytes() == data


def test_tampered_file_is_rejected_in_the_guest(guest: Guest) -> None:
    share = guest.shared_dir
    (share / "t.bin").write_bytes(os.urandom(200_000))
    proc = run_cdev("crypt", "encrypt", str(share / "t.bin"), "-o", str(share / "t.cdev"),
                    "--force", "--work-factor", "10", "--suite", "1", env=PASS)  # fmt: skip
    assert proc.returncode == 0
    blob = bytearray((share / "t.cdev").read_bytes())
    blob[100_000] ^= 0x80
    (share / "t.cdev").write_bytes(blob)
    res = guest.run(
        [CDEV, "crypt", "decrypt", str(share / "t.cdev"), "-o", str(share / "t.out"),
         "--provider", "virtio"],
        timeout=300, env=PASS,
    )  # fmt: skip
    assert res.status == 1 and "failed authentication" in res.stderr, res
    assert "Traceback" not in res.stderr
    assert not (share / "t.out").exists()


@pytest.mark.parametrize("cipher", ["aes-128-cbc", "aes-256-cbc"])
def test_raw_output_is_byte_identical_to_the_hosts(guest: Guest, cipher: str) -> None:
    share = guest.shared_dir
    (share / "r.bin").write_bytes(os.urandom(300_001))
    key = os.urandom(16 if cipher == "aes-128-cbc" else 32).hex()
    iv = os.urandom(16).hex()
    args = ["crypt", "encrypt", "--raw", "--cipher", cipher, "--key", key, "--iv", iv,
            str(share / "r.bin"), "--force"]  # fmt: skip
    res = guest.run([CDEV, *args, "-o", str(share / "r.guest"), "--provider", "virtio"],
                    timeout=300)  # fmt: skip
    assert res.status == 0, res.stderr
    proc = run_cdev(*args, "-o", str(share / "r.host"))
    assert proc.returncode == 0
    assert (share / "r.guest").read_bytes() == (share / "r.host").read_bytes()


def _wait_listening(guest: Guest, port: int, timeout: float = 120) -> None:
    hexport = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = guest.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", timeout=30)
        if any(hexport in ln and ln.split()[3] == "0A" for ln in res.stdout.splitlines()):
            return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on guest port {port}")


def test_encrypted_chat_guest_on_virtio_host_on_software(guest: Guest) -> None:
    listener = guest.spawn(
        [CDEV, "chat", "listen", "0.0.0.0:7000", "--encrypt", "--provider", "virtio"],
        timeout=300, keep_stdin=True, env=PASS,
    )  # fmt: skip
    _wait_listening(guest, 7000)
    guest_lines = [f"from the guest {i}" for i in range(20)]
    host_lines = [f"from the host {i}" for i in range(20)]
    listener.write("".join(f"{ln}\n" for ln in guest_lines))
    listener.close_stdin()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")} | PASS
    host = subprocess.run(
        [CDEV, "chat", "connect", f"127.0.0.1:{guest.host_port(7000)}", "--encrypt"],
        input="".join(f"{ln}\n" for ln in host_lines).encode(),
        capture_output=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    res = listener.wait(timeout=120)
    assert host.returncode == 0, (host.stderr, res)
    assert res.status == 0, res.stderr
    # Both sides saw the same session fingerprint and every line of the other, in order.
    fingerprints = [
        ln.rsplit("fingerprint", 1)[1].split()[0]
        for ln in (host.stderr.decode() + res.stderr).splitlines()
        if "fingerprint" in ln
    ]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert [ln for ln in res.stdout.splitlines() if ln] == host_lines
    assert [ln for ln in host.stdout.decode().splitlines() if ln] == guest_lines

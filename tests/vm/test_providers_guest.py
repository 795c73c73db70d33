"""The provider table in the guest: AF_ALG in the guest kernel offers all of it; our device
answers for what it supports and refuses the rest (unsupported, never a wrong result);
``cdev crypt`` suite 2 runs through AF_ALG's AES-GCM and interoperates with the host."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cdev.fileformat import HEADER_LEN, SUITE_AES256CBC_HMACSHA256, SUITE_AES256GCM
from cdev.provider import ALGORITHMS
from cdev.vm.guest import Guest
from tests.cli_helpers import CDEV, run_cdev

pytestmark = pytest.mark.vm

PYTHON = str(Path(CDEV).with_name("python"))
KEY_HEX = os.urandom(32).hex()


def _selftest(guest: Guest, provider: str) -> list[dict[str, object]]:
    res = guest.run([CDEV, "session", "selftest", "--provider", provider, "--json"], timeout=900)
    assert res.status in (0, 1), res.stderr
    results: list[dict[str, object]] = json.loads(res.stdout)[provider]
    failed = [
        f"{r['algorithm']} {r['vector']} {r['operation']}: {r['detail']}"
        for r in results
        if r["status"] == "fail"
    ]
    assert res.status == 0 and not failed, failed
    return results


def test_afalg_offers_and_passes_every_algorithm(guest: Guest) -> None:
    results = _selftest(guest, "afalg")
    bad = [r for r in results if r["status"] != "pass"]
    assert not bad, bad
    assert {r["algorithm"] for r in results} == set(ALGORITHMS)
    info = guest.run([CDEV, "session", "info", "--provider", "afalg", "--json"], timeout=300)
    assert info.status == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["unsupported"] == [] and data["multipart_hash"] is True
    assert data["algorithms"]["aes-gcm"]["driver"], data["algorithms"]["aes-gcm"]


# Open a session for every algorithm the device does not claim: each must be refused.
PROBE = r"""
import json
from cdev.plugins import load_registry
from cdev.provider import ALGORITHMS, ProviderError
p = load_registry().open_provider("virtio")
caps = p.capabilities()
out = {"supported": [a.name for a in caps.ciphers + caps.macs], "multipart": caps.multipart,
       "refused": {}}
for name in caps.unsupported:
    a = ALGORITHMS[name]
    try:
        if a.kind in ("cipher", "aead"):
            s = p.open_session(cipher=name, key=bytes(range(1, a.key_sizes[0] + 1)))
        else:
            s = p.open_session(mac=name, mac_key=b"k" if a.kind == "hmac" else None)
        s.close()
        out["refused"][name] = "OPENED"
    except ProviderError as exc:
        out["refused"][name] = str(exc)
print(json.dumps(out))
"""


def test_device_reports_what_it_lacks_as_unsupported_not_wrong(guest: Guest) -> None:
    res = guest.run([PYTHON, "-c", PROBE], timeout=300)
    assert res.status == 0, res.stderr
    probe = json.loads(res.stdout)
    assert {"aes-cbc", "hmac-sha256"} <= set(probe["supported"])
    # Our device offers the whole table, multi-part hashing included: nothing is refused.
    assert probe["refused"] == {} and probe["multipart"] is True, probe
    for name, why in probe["refused"].items():
        assert why != "OPENED", f"the device opened a session for {name} it does not claim"
        assert "CIOCGSESSION failed" in why and ("EINVAL" in why or "EOPNOTSUPP" in why), why
    # The self-test agrees: what the device lacks is unsupported, the rest passes.
    results = _selftest(guest, "virtio")
    for r in results:
        expected = "pass" if r["algorithm"] in probe["supported"] else "unsupported"
        multipart = "split" in str(r["operation"]) or "byte by byte" in str(r["operation"])
        if multipart and not probe["multipart"]:
            expected = "unsupported"
        assert r["status"] == expected, r


def _guest_crypt(guest: Guest, *args: str) -> tuple[int, str]:
    key = guest.shared_dir / "suite2.key"
    key.write_text(KEY_HEX + "\n")
    res = guest.run([CDEV, "crypt", *args, "--key-file", str(key), "--force"], timeout=900)
    return res.status, res.stderr


@pytest.mark.parametrize("size", [0, 70_000, (1 << 20) + 12_345])
def test_crypt_suite_2_through_afalg_interoperates_with_the_host(guest: Guest, size: int) -> None:
    share = guest.shared_dir
    data = os.urandom(size)
    (share / "s2.bin").write_bytes(data)
    key = share / "suite2.key"
    key.write_text(KEY_HEX + "\n")
    status, err = _guest_crypt(guest, "encrypt", str(share / "s2.bin"), "-o",
                               str(share / "s2.cdev"), "--provider", "afalg")  # fmt: skip
    assert status == 0, err
    assert (share / "s2.cdev").read_bytes()[9] == SUITE_AES256GCM
    out = share / "s2.host"
    proc = run_cdev("crypt", "decrypt", str(share / "s2.cdev"), "-o", str(out), "--force",
                    "--key-file", str(key))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    # Host (software) to guest (AF_ALG).
    proc = run_cdev("crypt", "encrypt", str(out), "-o", str(share / "h2.cdev"), "--force",
                    "--key-file", str(key))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    status, err = _guest_crypt(guest, "decrypt", str(share / "h2.cdev"), "-o",
                               str(share / "h2.guest"), "--provider", "afalg")  # fmt: skip
    assert status == 0, err
    assert (share / "h2.guest").read_bytes() == data


def test_crypt_suite_2_attacks_fail_in_the_guest(guest: Guest) -> None:
    share = guest.shared_dir
    (share / "a.bin").write_bytes(os.urandom(3 * 65536 + 100))
    status, err = _guest_crypt(guest, "encrypt", str(share / "a.bin"), "-o",
                               str(share / "a.cdev"), "--provider", "afalg")  # fmt: skip
    assert status == 0, err
    blob = (share / "a.cdev").read_bytes()
    record = 65536 + 16
    body = blob[HEADER_LEN:]
    attacks = {
        "flipped bit": blob[:5000] + bytes([blob[5000] ^ 1]) + blob[5001:],
        "truncated": blob[: HEADER_LEN + 2 * record],
        "reordered": blob[:HEADER_LEN] + body[record : 2 * record] + body[:record]
        + body[2 * record :],
    }  # fmt: skip
    for name, bad in attacks.items():
        (share / "bad.cdev").write_bytes(bad)
        (share / "bad.out").unlink(missing_ok=True)
        status, err = _guest_crypt(guest, "decrypt", str(share / "bad.cdev"), "-o",
                                   str(share / "bad.out"), "--provider", "afalg")  # fmt: skip
        assert status == 1 and "failed authentication" in err, (name, status, err)
        assert "Traceback" not in err and not (share / "bad.out").exists(), name
    # A wrong key fails on the header, before any chunk.
    (share / "wrong.key").write_text(os.urandom(32).hex() + "\n")
    res = guest.run([CDEV, "crypt", "decrypt", str(share / "a.cdev"), "-o", str(share / "w.out"),
                     "--key-file", str(share / "wrong.key"), "--provider", "afalg"],
                    timeout=300)  # fmt: skip
    assert res.status == 1 and "wrong passphrase or key" in res.stderr, res


def test_crypt_through_the_device_picks_a_suite_it_can_do(guest: Guest) -> None:
    share = guest.shared_dir
    (share / "v.bin").write_bytes(os.urandom(100_000))
    info = guest.run([CDEV, "session", "info", "--provider", "virtio", "--json"], timeout=300)
    assert info.status == 0, info.stderr
    has_gcm = json.loads(info.stdout)["algorithms"]["aes-gcm"]["supported"]
    status, err = _guest_crypt(guest, "encrypt", str(share / "v.bin"), "-o",
                               str(share / "v.cdev"), "--provider", "virtio")  # fmt: skip
    assert status == 0, err
    want = SUITE_AES256GCM if has_gcm else SUITE_AES256CBC_HMACSHA256
    assert (share / "v.cdev").read_bytes()[9] == want
    if not has_gcm:
        status, err = _guest_crypt(guest, "encrypt", str(share / "v.bin"), "-o",
                                   str(share / "v2.cdev"), "--provider", "virtio",
                                   "--suite", "2")  # fmt: skip
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert status == 2 and len(lines) == 1 and "needs AES-GCM" in lines[0], err
        assert not (share / "v2.cdev").exists()


CHAINED = r"""
import hashlib, sys
from cdev.plugins import load_registry
p = load_registry().open_provider("virtio")
key, iv = bytes(range(32)), bytes(range(16))
data = bytes(i % 251 for i in range(600_000 - 600_000 % 16))
with p.open_session(cipher="aes-cbc", key=key) as s:
    ct = s.encrypt(data, iv)
    assert s.decrypt(ct, iv) == data
print(hashlib.sha256(ct).hexdigest())
"""


def test_requests_above_the_device_limit_chain_with_write_iv(guest: Guest) -> None:
    # 600 KB is more than the device takes at once: the provider chains the pieces with
    # COP_FLAG_WRITE_IV and checks the IV the device writes back.
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    res = guest.run([PYTHON, "-c", CHAINED], timeout=300)
    assert res.status == 0, res.stderr
    data = bytes(i % 251 for i in range(600_000 - 600_000 % 16))
    enc = Cipher(algorithms.AES(bytes(range(32))), modes.CBC(bytes(range(16)))).encryptor()
    want = hashlib.sha256(enc.update(data) + enc.finalize()).hexdigest()
    assert res.stdout.strip() == want

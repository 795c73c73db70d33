"""Every provider either passes the known-answer vectors or refuses to start with one line."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdev.errors import UnavailableError
from cdev.plugins import load_registry
from cdev.provider import AES_CBC, ALGORITHMS, HMAC_SHA256, AuthenticationError, ProviderError
from cdev.vectors import (
    AEAD_VECTORS,
    ALL_VECTORS,
    CIPHER_VECTORS,
    HASH_VECTORS,
    HMAC_VECTORS,
    Vector,
    run_vectors,
)
from tests.cli_helpers import assert_one_line_error, run_cdev

REGISTRY = load_registry()
BUILTIN = ["software", "cryptodev", "virtio", "afalg"]


def test_builtin_providers_are_registered() -> None:
    assert set(BUILTIN) <= set(REGISTRY.providers)
    for name in BUILTIN:
        assert REGISTRY.providers[name].plugin == name


@pytest.mark.parametrize("name", BUILTIN)
def test_provider_passes_vectors_or_explains_why_not(name: str) -> None:
    try:
        provider = REGISTRY.open_provider(name)
    except UnavailableError as exc:
        # Unavailable here (no /dev/crypto, no guest device, no AF_ALG): the CLI must say
        # why in one line with exit code 2. The guest tests cover virtio and afalg.
        assert "\n" not in str(exc)
        proc = run_cdev("session", "selftest", "--provider", name)
        assert_one_line_error(proc, 2)
        return
    with provider:
        results = run_vectors(provider)
    assert len(results) == EXPECTED_RESULTS
    assert all(r.status != "fail" for r in results), [r for r in results if r.status == "fail"]


# Ciphers: encrypt + decrypt; AEAD: encrypt, decrypt, tag failure; hashes and HMACs:
# one shot, split at every boundary, byte by byte.
EXPECTED_RESULTS = (
    2 * len(CIPHER_VECTORS) + 3 * len(AEAD_VECTORS) + 3 * (len(HASH_VECTORS) + len(HMAC_VECTORS))
)


def test_software_is_always_available_and_passes_every_algorithm() -> None:
    with REGISTRY.open_provider("software") as p:
        results = run_vectors(p)
        caps = p.capabilities()
    assert "OpenSSL" in caps.driver
    assert caps.unsupported == () and caps.multipart
    assert len(results) == EXPECTED_RESULTS
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    # Every algorithm of the table has published vectors.
    assert {r.algorithm for r in results} == set(ALGORITHMS)


def _independent(v: Vector) -> bytes:
    """What OpenSSL (pyca), hashlib and hmac compute for a vector, for the table's own sake."""
    kind = ALGORITHMS[v.algorithm].kind
    if kind == "aead":
        return AESGCM(v.key).encrypt(v.iv, v.data, v.aad)
    if kind == "hash":
        return hashlib.new(v.algorithm, v.data).digest()
    if kind == "hmac":
        return hmac.new(v.key, v.data, v.algorithm.removeprefix("hmac-")).digest()
    mode: modes.Mode = (
        {
            "aes-cbc": modes.CBC,
            "3des-cbc": modes.CBC,
            "aes-ctr": modes.CTR,
            "aes-xts": modes.XTS,
        }[v.algorithm](v.iv)
        if v.iv
        else modes.ECB()
    )
    alg = TripleDES(v.key) if v.algorithm == "3des-cbc" else algorithms.AES(v.key)
    enc = Cipher(alg, mode).encryptor()
    return enc.update(v.data) + enc.finalize()


@pytest.mark.parametrize("v", ALL_VECTORS, ids=lambda v: v.name)
def test_vectors_agree_with_an_independent_implementation(v: Vector) -> None:
    # Guards against a typo in the vector table itself (truncated digests: a prefix).
    assert _independent(v)[: len(v.expected)] == v.expected


def test_multipart_state_follows_cryptodev() -> None:
    # A one-shot mac() drops a half-fed message, final() starts a new one, and a
    # session with a cipher cannot hash arbitrary data.
    with REGISTRY.open_provider("software") as p, p.open_session(mac="sha256") as s:
        s.update(b"stale")
        assert s.mac(b"abc") == hashlib.sha256(b"abc").digest()
        s.update(b"a")
        s.update(b"bc")
        assert s.final() == hashlib.sha256(b"abc").digest()
        assert s.final() == hashlib.sha256(b"").digest()


def test_aead_refuses_tampering_and_bad_ivs() -> None:
    key, iv = os.urandom(32), os.urandom(12)
    with REGISTRY.open_provider("software") as p, p.open_session("aes-gcm", key) as s:
        sealed = s.aead_encrypt(iv, b"secret", b"aad")
        assert s.aead_decrypt(iv, sealed, b"aad") == b"secret"
        for data, aad in ((sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad"), (sealed, b"aaD")):
            with pytest.raises(AuthenticationError):
                s.aead_decrypt(iv, data, aad)
        with pytest.raises(AuthenticationError):
            s.aead_decrypt(iv, b"short", b"")
        with pytest.raises(ProviderError, match="IV must be 12"):
            s.aead_encrypt(bytes(16), b"x")
        with pytest.raises(ProviderError, match="no cipher"):
            s.encrypt(bytes(16), bytes(16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cipher": AES_CBC, "key": b"short"}, "AES key"),
        ({"cipher": "des-cbc", "key": bytes(16)}, "unsupported cipher"),
        ({"cipher": "sha256", "key": bytes(16)}, "unsupported cipher"),
        ({"cipher": "aes-xts", "key": bytes(16)}, "AES key must be 32, 64"),
        ({"cipher": "3des-cbc", "key": bytes(16)}, "3des-cbc key must be 24"),
        ({"cipher": "aes-gcm", "key": bytes(16), "mac": HMAC_SHA256, "mac_key": b"k"}, "no MAC"),
        ({"mac": HMAC_SHA256, "mac_key": b""}, "HMAC key"),
        ({"mac": "hmac-sha1", "mac_key": bytes(513)}, "HMAC key"),
        ({"mac": "sha1", "mac_key": b"k"}, "takes no key"),
        ({"mac": "aes-cbc"}, "unsupported MAC"),
        ({}, "needs a cipher"),
    ],
)
def test_bad_session_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with REGISTRY.open_provider("software") as p, pytest.raises(ProviderError, match=message):
        p.open_session(**kwargs)  # type: ignore[arg-type]


def test_bad_requests_are_refused() -> None:
    with REGISTRY.open_provider("software") as p, p.open_session(AES_CBC, bytes(16)) as s:
        with pytest.raises(ProviderError, match="multiple of 16"):
            s.encrypt(b"x" * 17, bytes(16))
        with pytest.raises(ProviderError, match="IV must be 16"):
            s.encrypt(b"x" * 16, bytes(8))
        with pytest.raises(ProviderError, match="no MAC"):
            s.mac(b"data")
    with pytest.raises(ProviderError, match="closed"):
        s.encrypt(bytes(16), bytes(16))


def test_combined_sessions_cannot_mac_arbitrary_data_as_on_dev_crypto() -> None:
    # cryptodev MACs only a combined session's own cipher input, so encrypt-then-MAC users
    # (crypt, chat) must open a MAC-only session; software enforces the same so that a host
    # test catches what would otherwise only fail on a device.
    with REGISTRY.open_provider("software") as p:
        s = p.open_session(AES_CBC, bytes(16), HMAC_SHA256, b"k")
        with pytest.raises(ProviderError, match="MAC-only session"):
            s.mac(b"data")
        assert len(s.encrypt(bytes(32), bytes(16))) == 32


def test_unknown_provider_is_a_one_line_error() -> None:
    proc = run_cdev("session", "info", "--provider", "nonesuch")
    line = assert_one_line_error(proc, 2)
    assert "unknown provider 'nonesuch'" in line and "software" in line


def test_provider_from_environment() -> None:
    proc = run_cdev("session", "info", "--json", env={"CDEV_PROVIDER": "software"})
    assert proc.returncode == 0, proc.stderr
    assert b'"provider": "software"' in proc.stdout


def test_selftest_all_lists_unavailable_and_passes() -> None:
    proc = run_cdev("session", "selftest", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert b'"software"' in proc.stdout
    if not os.path.exists("/dev/crypto"):
        assert b"/dev/crypto does not exist" in proc.stdout


@pytest.mark.parametrize("encrypt", [True, False])
def test_requests_larger_than_a_device_takes_are_chained_exactly(encrypt: bool) -> None:
    # The ioctl and AF_ALG providers split big requests; the result must be the one-shot CBC.
    from cdev.provider import cbc_in_pieces

    data, key, iv = os.urandom(16 * 37), os.urandom(16), os.urandom(16)
    with REGISTRY.open_provider("software") as p, p.open_session(AES_CBC, key) as s:
        whole = s.encrypt(data, iv) if encrypt else s.decrypt(data, iv)
        calls: list[int] = []

        def run(piece: bytes, piece_iv: bytes) -> bytes:
            calls.append(len(piece))
            return s.encrypt(piece, piece_iv) if encrypt else s.decrypt(piece, piece_iv)

        assert cbc_in_pieces(data, iv, 100, encrypt, run) == whole
        assert calls == [96] * 6 + [16]
        with pytest.raises(ProviderError, match="multiple of 16"):
            cbc_in_pieces(data[:-1], iv, 100, encrypt, run)


def test_session_info_all_lists_every_provider_and_what_it_supports() -> None:
    import json

    proc = run_cdev("session", "info", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(BUILTIN) <= set(data)
    soft = data["software"]
    assert soft["unsupported"] == [] and soft["multipart_hash"] is True
    assert all(a["supported"] for a in soft["algorithms"].values())
    assert set(soft["algorithms"]) == set(ALGORITHMS)
    for name in BUILTIN:
        entry = data[name]
        if "unavailable" in entry:
            assert "\n" not in entry["unavailable"]
        else:
            assert set(entry["algorithms"]) == set(ALGORITHMS)

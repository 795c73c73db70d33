"""The device's full algorithm table and its discovery, through QEMU's qtest accelerator.

Every algorithm the device lists in its config space is checked against published
vectors and against pyca/cryptography and hashlib on random data: AES-CBC/ECB/CTR/XTS,
3DES-CBC, MD5, SHA-1, SHA-2 and HMAC with each digest; chained IVs (an operation
without an IV continues where the previous one stopped, as cryptodev-linux does), the
IV written back, multi-part hashing split at many boundaries, copying a hash state,
the protocol version an older driver speaks, and the per-device budgets.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import itertools
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdev.vm import qemu_build
from tests.qtest_guest import (
    Buf,
    C,
    Qtest,
    VirtioCryptodev,
    authcrypt_chain,
    close_chain,
    create_chain,
    crypt_chain,
    destroy_chain,
    hash_copy_chain,
    info_chain,
    into,
    open_chain,
    out,
    req,
)

pytestmark = pytest.mark.vm

OK, BADMSG, INVAL = C["VCD_S_OK"], C["VCD_S_BADMSG"], C["VCD_S_INVAL"]
NOSESSION, NOTSUPP, LIMIT = C["VCD_S_NOSESSION"], C["VCD_S_NOTSUPP"], C["VCD_S_LIMIT"]
ENC, DEC = C["VCD_OP_ENCRYPT"], C["VCD_OP_DECRYPT"]
RESET, FINAL, IV_OUT = C["VCD_CF_HASH_RESET"], C["VCD_CF_HASH_FINAL"], C["VCD_CF_IV_OUT"]
ONESHOT = RESET | FINAL

CBC, ECB, CTR, XTS = (C[f"VCD_CIPHER_AES_{m}"] for m in ("CBC", "ECB", "CTR", "XTS"))
DES3 = C["VCD_CIPHER_3DES_CBC"]
GCM = C["VCD_CIPHER_AES_GCM"]
BADTAG = C["VCD_S_BADTAG"]
# cipher -> (key sizes, IV size, block size)
CIPHERS = {
    CBC: ((16, 24, 32), 16, 16),
    ECB: ((16, 24, 32), 0, 16),
    CTR: ((16, 24, 32), 16, 1),
    XTS: ((32, 64), 16, 16),
    DES3: ((24,), 8, 8),
}
# mac -> (hashlib name, keyed)
MACS = {
    C["VCD_MAC_MD5"]: ("md5", False),
    C["VCD_MAC_SHA1"]: ("sha1", False),
    C["VCD_MAC_SHA224"]: ("sha224", False),
    C["VCD_MAC_SHA256"]: ("sha256", False),
    C["VCD_MAC_SHA384"]: ("sha384", False),
    C["VCD_MAC_SHA512"]: ("sha512", False),
    C["VCD_MAC_MD5_HMAC"]: ("md5", True),
    C["VCD_MAC_SHA1_HMAC"]: ("sha1", True),
    C["VCD_MAC_SHA224_HMAC"]: ("sha224", True),
    C["VCD_MAC_SHA256_HMAC"]: ("sha256", True),
    C["VCD_MAC_SHA384_HMAC"]: ("sha384", True),
    C["VCD_MAC_SHA512_HMAC"]: ("sha512", True),
}


# The engine under test and the QEMU that runs it: builtin, and our build, here;
# tests/vm/test_host_engine.py runs this file in a guest with engine=host over the
# guest's /dev/crypto (our own device there) and the host's QEMU binary.
ENGINE = os.environ.get("CDEV_QTEST_ENGINE", "builtin")


@pytest.fixture(scope="module")
def qemu_binary() -> Path:
    given = os.environ.get("CDEV_QTEST_QEMU")
    return Path(given) if given else qemu_build.ensure_qemu()


def boot(qemu: Path, *props: str) -> tuple[Qtest, VirtioCryptodev]:
    opts = ",".join(("virtio-cryptodev-pci", f"engine={ENGINE}", *props))
    qt = Qtest(qemu, qemu_build.firmware_dirs(), ["-device", opts])
    return qt, VirtioCryptodev(qt)


@pytest.fixture
def dev(qemu_binary: Path) -> Iterator[VirtioCryptodev]:
    qt, d = boot(qemu_binary)
    yield d
    assert qt.alive(), qt.stderr_text()
    qt.close()


def reference(cipher: int, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    """What cryptodev-linux (the Linux crypto API) computes, by pyca/cryptography."""
    mode: modes.Mode
    algo: algorithms.AES | TripleDES = algorithms.AES(key)
    if cipher == CBC:
        mode = modes.CBC(iv)
    elif cipher == ECB:
        mode = modes.ECB()
    elif cipher == CTR:
        mode = modes.CTR(iv)
    elif cipher == XTS:
        mode = modes.XTS(iv)
    else:
        algo, mode = TripleDES(key), modes.CBC(iv)
    c = Cipher(algo, mode)
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def digest(mac: int, key: bytes, data: bytes) -> bytes:
    name, keyed = MACS[mac]
    return std_hmac.new(key, data, name).digest() if keyed else hashlib.new(name, data).digest()


def open_handle(d: VirtioCryptodev) -> int:
    done = d.call(open_chain())
    assert done.status == OK
    return done.resp[1]


def session(d: VirtioCryptodev, h: int, cipher: int = 0, key: bytes = b"", mac: int = 0,
            mackey: bytes = b"") -> int:  # fmt: skip
    done = d.call(create_chain(h, cipher, key, mac, mackey))
    assert done.status == OK, (cipher, mac, done.resp)
    return done.resp[2]


def crypt(d: VirtioCryptodev, h: int, ses: int, op: int, iv: bytes, data: bytes,
          flags: int = 0, ivout: int = 0) -> tuple[bytes, bytes]:  # fmt: skip
    """A cipher-only CRYPT; returns (dst, IV written back)."""
    done = d.call(crypt_chain(h, ses, op, iv, data, flags=flags, ivout=ivout))
    assert done.status == OK, done.resp
    dst = done.bufs[0] if data else b""
    return dst, (done.bufs[-2] if ivout else b"")


def mac_op(d: VirtioCryptodev, h: int, ses: int, mac: int, data: bytes, flags: int) -> bytes:
    maclen = hashlib.new(MACS[mac][0]).digest_size
    done = d.call(
        crypt_chain(
            h,
            ses,
            ENC,
            b"",
            data,
            cipher=False,
            mac=bool(flags & FINAL),
            flags=flags,
            maclen=maclen,
        )
    )
    assert done.status == OK, done.resp
    return done.bufs[0] if flags & FINAL else b""


# ------------------------------------------------------------------ discovery


def test_features_and_config_list_every_algorithm(dev: VirtioCryptodev) -> None:
    assert dev.has("VCD_F_ALGS") and dev.has("VCD_F_MULTIPART") and dev.has("VCD_F_AEAD")
    # VIRTIO_F_RING_RESET (bit 40) is not offered: a queue reset is the device's reset.
    assert not dev.device_features_hi & (1 << (40 - 32))
    algs, max_data, max_handles, max_sessions, max_hash = dev.config()
    assert algs == set(CIPHERS) | set(MACS) | {GCM}
    assert max_data == C["VCD_MAX_DATA_LEN"] and max_handles == C["VCD_MAX_HANDLES"]
    assert max_sessions == C["VCD_MAX_SESSIONS"] and max_hash == C["VCD_MAX_HASH_STATES"]


def test_session_info_names_each_algorithm(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    names = {CBC: b"cbc(aes)", ECB: b"ecb(aes)", CTR: b"ctr(aes)", XTS: b"xts(aes)",
             DES3: b"cbc(des3_ede)"}  # fmt: skip
    for cipher, name in names.items():
        ses = session(dev, h, cipher, b"k" * CIPHERS[cipher][0][0])
        info = dev.call(info_chain(h, ses)).bufs[0]
        assert info[:64].rstrip(b"\0") == name and info[64:128].rstrip(b"\0")
    for mac, (hname, keyed) in MACS.items():
        ses = session(dev, h, mac=mac, mackey=b"m" if keyed else b"")
        info = dev.call(info_chain(h, ses)).bufs[0]
        want = f"hmac({hname})" if keyed else hname
        assert info[128:192].rstrip(b"\0") == want.encode()
        assert info[192:256].rstrip(b"\0") == b"gnutls"


# ------------------------------------------------------------------ published vectors

# NIST SP 800-38A, F.1.1 / F.2.1 / F.5.1 (AES-128) and the first block of F.2.5 (AES-256).
SP800_38A_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
SP800_38A_PT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
SP800_38A = [
    (ECB, b"", "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
               "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"),
    (CBC, bytes(range(16)), "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
                            "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
    (CTR, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
     "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
     "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
]  # fmt: skip


@pytest.mark.parametrize(("cipher", "iv", "want"), SP800_38A, ids=["ecb", "cbc", "ctr"])
def test_sp800_38a_vectors(dev: VirtioCryptodev, cipher: int, iv: bytes, want: str) -> None:
    h = open_handle(dev)
    ses = session(dev, h, cipher, SP800_38A_KEY)
    ct, _ = crypt(dev, h, ses, ENC, iv, SP800_38A_PT)
    assert ct.hex() == want
    pt, _ = crypt(dev, h, ses, DEC, iv, ct)
    assert pt == SP800_38A_PT


def test_ieee1619_xts_vector(dev: VirtioCryptodev) -> None:
    # IEEE 1619-2007 vector 1: all-zero keys and data, tweak 0.
    h = open_handle(dev)
    ses = session(dev, h, XTS, bytes(32))
    ct, _ = crypt(dev, h, ses, ENC, bytes(16), bytes(32))
    assert ct.hex() == "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"


def test_fips180_and_rfc4231_vectors(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    sha256 = session(dev, h, mac=C["VCD_MAC_SHA256"])
    got = mac_op(dev, h, sha256, C["VCD_MAC_SHA256"], b"abc", ONESHOT)
    assert got.hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    hm = session(dev, h, mac=C["VCD_MAC_SHA256_HMAC"], mackey=b"Jefe")  # RFC 4231 case 2
    got = mac_op(dev, h, hm, C["VCD_MAC_SHA256_HMAC"], b"what do ya want for nothing?", ONESHOT)
    assert got.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    md5 = session(dev, h, mac=C["VCD_MAC_MD5_HMAC"], mackey=b"Jefe")  # RFC 2202 case 2
    got = mac_op(dev, h, md5, C["VCD_MAC_MD5_HMAC"], b"what do ya want for nothing?", ONESHOT)
    assert got.hex() == "750c783e6ab0b503eaa86e310a5db738"


# ------------------------------------------------------------------ random known answers


@pytest.mark.parametrize("cipher", list(CIPHERS), ids=["3des", "cbc", "ctr", "xts", "ecb"])
def test_every_cipher_and_key_size_matches_cryptography(dev: VirtioCryptodev, cipher: int) -> None:
    keylens, ivlen, block = CIPHERS[cipher]
    rng = random.Random(cipher)
    h = open_handle(dev)
    for keylen in keylens:
        key = rng.randbytes(keylen)
        while cipher == XTS and key[: keylen // 2] == key[keylen // 2 :]:
            key = rng.randbytes(keylen)
        ses = session(dev, h, cipher, key)
        sizes = [block, 3 * block, 4096, C["VCD_MAX_DATA_LEN"]]
        if block == 1:
            sizes += [1, 15, 17, 1000]
        for size in sizes:
            iv, data = rng.randbytes(ivlen), rng.randbytes(size)
            ct, _ = crypt(dev, h, ses, ENC, iv, data)
            assert ct == reference(cipher, key, iv, data, True), (keylen, size)
            pt, _ = crypt(dev, h, ses, DEC, iv, ct)
            assert pt == data


@pytest.mark.parametrize("mac", list(MACS), ids=[f"{n}-{k}" for n, k in MACS.values()])
def test_every_digest_matches_hashlib(dev: VirtioCryptodev, mac: int) -> None:
    rng = random.Random(mac)
    h = open_handle(dev)
    keyed = MACS[mac][1]
    for keylen in (0, 1, 20, 64, 65, 128, 512) if keyed else (0,):
        key = rng.randbytes(keylen)
        ses = session(dev, h, mac=mac, mackey=key)
        for size in (0, 1, 55, 64, 1000, 100_000):
            data = rng.randbytes(size)
            assert mac_op(dev, h, ses, mac, data, ONESHOT) == digest(mac, key, data)


# ------------------------------------------------------------------ chained IVs


@pytest.mark.parametrize("cipher", [CBC, CTR, DES3], ids=["cbc", "ctr", "3des"])
def test_no_iv_continues_the_chain(dev: VirtioCryptodev, cipher: int) -> None:
    """Split at block boundaries, later parts without an IV: the same as one operation."""
    keylens, ivlen, _ = CIPHERS[cipher]
    rng = random.Random(11)
    h = open_handle(dev)
    key, iv = rng.randbytes(keylens[-1]), rng.randbytes(ivlen)
    ses = session(dev, h, cipher, key)
    data = rng.randbytes(48 * 16)
    whole = reference(cipher, key, iv, data, True)
    for cuts in ([16], [32, 256], [16 * 7, 16 * 8, 16 * 40]):
        bounds = [0, *cuts, len(data)]
        parts = [
            crypt(dev, h, ses, ENC, iv if i == 0 else b"", data[a:b])[0]
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
        assert b"".join(parts) == whole, cuts
        parts = [
            crypt(dev, h, ses, DEC, iv if i == 0 else b"", whole[a:b])[0]
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
        assert b"".join(parts) == data, cuts


def test_a_sessions_requests_run_in_ring_order(dev: VirtioCryptodev) -> None:
    """One kick: a request big enough for a worker thread, then small ones of the same
    session that would run inline at once; chained IV and hash state must see them in
    ring order (VCD_F_ORDERED), while another session's small request is not held up."""
    assert dev.has("VCD_F_ORDERED")
    rng = random.Random(12)
    h = open_handle(dev)
    key, iv = rng.randbytes(16), rng.randbytes(16)
    ses, other = session(dev, h, CBC, key), session(dev, h, CBC, key)
    sha = C["VCD_MAC_SHA256"]
    hs = session(dev, h, mac=sha)
    parts = [rng.randbytes(n) for n in (256 * 1024, 16, 4096, 32)]
    upd, fin = C["VCD_CF_HASH_RESET"], C["VCD_CF_HASH_FINAL"]
    chains = [crypt_chain(h, ses, ENC, iv if i == 0 else b"", p) for i, p in enumerate(parts)]
    chains.insert(1, crypt_chain(h, other, ENC, iv, parts[1]))
    chains += [
        crypt_chain(h, hs, ENC, b"", parts[0], cipher=False, flags=upd),
        crypt_chain(h, hs, ENC, b"", parts[1], cipher=False, flags=0),
        crypt_chain(h, hs, ENC, b"", parts[2], cipher=False, mac=True, flags=fin),
    ]
    done = dev.submit(chains, timeout=120)
    assert [d.status for d in done] == [OK] * len(chains)
    got = b"".join(done[i].bufs[0] for i in (0, 2, 3, 4))
    assert got == reference(CBC, key, iv, b"".join(parts), True)
    assert done[1].bufs[0] == reference(CBC, key, iv, parts[1], True)
    assert done[-1].bufs[0] == hashlib.sha256(b"".join(parts[:3])).digest()


def test_ordered_off_is_not_offered(qemu_binary: Path) -> None:
    qt, d = boot(qemu_binary, "ordered=off")
    try:
        assert d.has("VCD_F_ALGS") and not d.has("VCD_F_ORDERED")
    finally:
        qt.close()


def test_ctr_partial_block_advances_the_counter(dev: VirtioCryptodev) -> None:
    # As Linux's ctr(aes): a partial last block still uses up its counter value.
    h = open_handle(dev)
    key, iv = b"k" * 16, bytes(15) + b"\xfe"
    ses = session(dev, h, CTR, key)
    first, ivback = crypt(dev, h, ses, ENC, iv, b"\1" * 20, flags=IV_OUT, ivout=16)
    assert ivback == (int.from_bytes(iv, "big") + 2).to_bytes(16, "big")
    second, _ = crypt(dev, h, ses, ENC, b"", b"\2" * 16)
    assert first == reference(CTR, key, iv, b"\1" * 20, True)
    assert second == reference(CTR, key, ivback, b"\2" * 16, True)


def test_iv_written_back(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    key, iv, data = b"k" * 32, b"i" * 16, bytes(range(64))
    cbc = session(dev, h, CBC, key)
    ct, ivback = crypt(dev, h, cbc, ENC, iv, data, flags=IV_OUT, ivout=16)
    assert ivback == ct[-16:]
    pt, ivback = crypt(dev, h, cbc, DEC, iv, ct, flags=IV_OUT, ivout=16)
    assert pt == data and ivback == ct[-16:]
    xts = session(dev, h, XTS, bytes(range(32)))
    _, ivback = crypt(dev, h, xts, ENC, iv, data, flags=IV_OUT, ivout=16)
    assert ivback == iv  # XTS keeps its tweak
    ecb = session(dev, h, ECB, key)
    done = dev.call(crypt_chain(h, ecb, ENC, b"", data, flags=IV_OUT, ivout=16))
    assert done.status == INVAL  # ECB has no IV


# ------------------------------------------------------------------ multi-part hashing


@pytest.mark.parametrize("mac", [C["VCD_MAC_SHA1"], C["VCD_MAC_SHA512_HMAC"], C["VCD_MAC_MD5"]])
def test_multipart_hash_split_everywhere(dev: VirtioCryptodev, mac: int) -> None:
    h = open_handle(dev)
    key = b"key" if MACS[mac][1] else b""
    ses = session(dev, h, mac=mac, mackey=key)
    data = bytes(range(256)) * 2 + b"tail"
    want = digest(mac, key, data)
    for cut in [0, 1, 63, 64, 65, 128, 300, len(data) - 1, len(data)]:
        mac_op(dev, h, ses, mac, data[:cut], RESET)
        assert mac_op(dev, h, ses, mac, data[cut:], FINAL) == want, cut
    # Three parts, the last one empty; FINAL restarts, so the next one-shot is clean.
    mac_op(dev, h, ses, mac, data[:10], RESET)
    mac_op(dev, h, ses, mac, data[10:], 0)
    assert mac_op(dev, h, ses, mac, b"", FINAL) == want
    assert mac_op(dev, h, ses, mac, b"x", FINAL) == digest(mac, key, b"x")
    # RESET throws away what came before it.
    mac_op(dev, h, ses, mac, b"garbage", 0)
    assert mac_op(dev, h, ses, mac, data, ONESHOT) == want


def test_hash_copy(dev: VirtioCryptodev) -> None:
    sha = C["VCD_MAC_SHA256_HMAC"]
    h = open_handle(dev)
    a = session(dev, h, mac=sha, mackey=b"k")
    b = session(dev, h, mac=sha, mackey=b"other key: replaced by the copy")
    mac_op(dev, h, a, sha, b"common prefix ", RESET)
    assert dev.call(hash_copy_chain(h, b, a)).status == OK
    assert mac_op(dev, h, a, sha, b"A", FINAL) == digest(sha, b"k", b"common prefix A")
    assert mac_op(dev, h, b, sha, b"B", FINAL) == digest(sha, b"k", b"common prefix B")
    # Refused: another algorithm, a cipher session, an unknown source, another handle's.
    other = session(dev, h, mac=C["VCD_MAC_SHA256"])
    aes = session(dev, h, CBC, b"k" * 16)
    assert dev.call(hash_copy_chain(h, other, a)).status == INVAL
    assert dev.call(hash_copy_chain(h, aes, a)).status == INVAL
    assert dev.call(hash_copy_chain(h, a, 12345)).status == NOSESSION
    h2 = open_handle(dev)
    c = session(dev, h2, mac=sha, mackey=b"k")
    assert dev.call(hash_copy_chain(h2, c, a)).status == NOSESSION


# ------------------------------------------------------------------ versions and budgets


def test_older_driver_gets_the_first_protocol(dev: VirtioCryptodev) -> None:
    """A driver that negotiates no feature bits: AES-CBC/HMAC-SHA256, explicit IVs."""
    dev.init(features=0)
    assert not dev.has("VCD_F_ALGS")
    h = open_handle(dev)
    assert dev.call(create_chain(h, CTR, b"k" * 16)).status == NOTSUPP
    assert dev.call(create_chain(h, 0, b"", C["VCD_MAC_SHA1"])).status == NOTSUPP
    ses = session(dev, h, CBC, b"k" * 16, C["VCD_MAC_SHA256_HMAC"], b"m")
    done = dev.call(crypt_chain(h, ses, ENC, b"i" * 16, b"d" * 32, mac=True, flags=0))
    assert done.status == OK
    assert done.bufs[1] == digest(C["VCD_MAC_SHA256_HMAC"], b"m", b"d" * 32)
    assert dev.call(crypt_chain(h, ses, ENC, b"", b"d" * 32, mac=True, flags=0)).status == INVAL
    assert dev.call(crypt_chain(h, ses, ENC, b"i" * 16, b"d" * 32, mac=True)).status == INVAL
    assert dev.call(hash_copy_chain(h, ses, ses)).status == NOTSUPP


def test_older_device_offers_nothing_new(qemu_binary: Path) -> None:
    """The device as the first protocol version had it: no feature bits to negotiate."""
    qt, d = boot(qemu_binary, "algs=off", "multipart=off", "aead=off", "ordered=off")
    try:
        assert d.features == 0
        h = open_handle(d)
        assert d.call(create_chain(h, XTS, b"k" * 32)).status == NOTSUPP
        ses = session(d, h, CBC, b"k" * 16)
        assert d.call(crypt_chain(h, ses, ENC, b"i" * 16, b"d" * 16)).status == OK
    finally:
        qt.close()


def test_multipart_off_allows_only_one_shot(qemu_binary: Path) -> None:
    qt, d = boot(qemu_binary, "multipart=off")
    try:
        assert d.has("VCD_F_ALGS") and not d.has("VCD_F_MULTIPART")
        h = open_handle(d)
        sha = C["VCD_MAC_SHA1"]
        ses = session(d, h, mac=sha)
        assert mac_op(d, h, ses, sha, b"abc", ONESHOT) == hashlib.sha1(b"abc").digest()
        done = d.call(crypt_chain(h, ses, ENC, b"", b"abc", cipher=False, flags=RESET))
        assert done.status == NOTSUPP
    finally:
        qt.close()


def test_budgets_refuse_and_free(qemu_binary: Path) -> None:
    qt, d = boot(qemu_binary, "max-sessions=300", "max-hash-states=100")
    try:
        _, _, _, max_sessions, max_hash = d.config()
        assert (max_sessions, max_hash) == (300, 100)
        hs = [open_handle(d) for _ in range(3)]
        macs = []
        for start in range(0, 101, 40):
            macs += d.submit(
                [
                    create_chain(hs[i % 3], 0, b"", C["VCD_MAC_SHA256"])
                    for i in range(start, min(start + 40, 101))
                ]
            )
        assert [m.status for m in macs].count(OK) == 100 and macs[-1].status == LIMIT
        ciphers = []
        for _ in range(6):
            ciphers += d.submit([create_chain(hs[1], CBC, b"k" * 16) for _ in range(40)])
        assert [c.status for c in ciphers].count(OK) == 200
        assert ciphers[-1].status == LIMIT
        assert d.call(create_chain(hs[2], ECB, b"k" * 16)).status == LIMIT
        # Closing a handle gives its sessions back to the budget.
        assert d.call(close_chain(hs[1])).status == OK
        assert d.call(create_chain(hs[2], ECB, b"k" * 16)).status == OK
        assert qt.alive()
    finally:
        qt.close()


def test_4096_sessions_on_one_handle(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    ids = []
    while len(ids) < 4096:
        for done in dev.submit([create_chain(h, ECB, b"k" * 16) for _ in range(40)]):
            assert done.status == OK
            ids.append(done.resp[2])
    assert len(set(ids)) == len(ids)
    last = ids[-1]
    assert dev.call(crypt_chain(h, last, ENC, b"", bytes(16))).status == OK
    assert dev.call(destroy_chain(h, ids[0])).status == OK
    assert dev.call(close_chain(h)).status == OK


# ------------------------------------------------------------------ malformed new requests


def test_malformed_new_requests(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    cbc = session(dev, h, CBC, b"k" * 16)
    ecb = session(dev, h, ECB, b"k" * 16)
    des = session(dev, h, DES3, b"k" * 24)
    sha = session(dev, h, mac=C["VCD_MAC_SHA384"])
    crypt_req = dict(handle=h, cmd=C["VCD_CMD_CRYPT"], session=cbc, length=16, ivlen=16)
    cases = [
        ("unknown flag", crypt_chain(h, cbc, ENC, b"i" * 16, b"d" * 16, flags=8), INVAL),
        ("hash flags on a cipher", crypt_chain(h, cbc, ENC, b"i" * 16, bytes(16), flags=1), INVAL),
        ("iv on ecb", crypt_chain(h, ecb, ENC, b"i" * 16, bytes(16)), INVAL),
        ("aes iv on 3des", crypt_chain(h, des, ENC, b"i" * 16, bytes(16)), INVAL),
        ("3des len not 8n", crypt_chain(h, des, ENC, b"i" * 8, bytes(12)), INVAL),
        ("iv out without room", crypt_chain(h, cbc, ENC, b"i" * 16, bytes(16), flags=IV_OUT),
         BADMSG),
        ("digest area too small", crypt_chain(h, sha, ENC, b"", b"x", cipher=False, mac=True,
                                              maclen=32), BADMSG),
        ("digest area without FINAL", crypt_chain(h, sha, ENC, b"", b"x", cipher=False,
                                                  mac=True, flags=RESET, maclen=48), BADMSG),
        ("session2 on crypt", [out(req(2, **crypt_req, session2=cbc)), out(b"i" * 16),
                               out(bytes(16)), into(16), into(16)], INVAL),
        ("copy with extra area", [*hash_copy_chain(h, sha, sha)[:-1], into(16), into(16)],
         BADMSG),
        ("xts key 48", create_chain(h, XTS, b"k" * 48), INVAL),
        ("3des key 16", create_chain(h, DES3, b"k" * 16), INVAL),
        ("plain hash with a key", create_chain(h, 0, b"", C["VCD_MAC_SHA1"], b"k"), INVAL),
        ("gcm with a mac", create_chain(h, GCM, b"k" * 16, C["VCD_MAC_SHA1"]), INVAL),
        ("camellia (not offered)", create_chain(h, 101, b"k" * 16), NOTSUPP),
        ("cipher number as mac", create_chain(h, 0, b"", CBC), NOTSUPP),
        ("mac number as cipher", create_chain(h, C["VCD_MAC_SHA1"], b"k" * 16), NOTSUPP),
        ("number 127", create_chain(h, 127, b"k" * 16), NOTSUPP),
        ("huge number", create_chain(h, 0xFFFFFFFF, b"k" * 16), NOTSUPP),
    ]  # fmt: skip
    failures = [
        f"{name}: {done.status} != {want}"
        for name, chain, want in cases
        if (done := dev.call(chain)).status != want
    ]
    assert not failures, "\n".join(failures)
    ct, _ = crypt(dev, h, cbc, ENC, b"i" * 16, bytes(16))
    assert ct == reference(CBC, b"k" * 16, b"i" * 16, bytes(16), True)


# ------------------------------------------------------------------ AEAD (AES-GCM)


def test_gcm_spec_vector(dev: VirtioCryptodev) -> None:
    # The GCM specification's test case 4 (AES-128, 60 bytes, 20 bytes of AAD).
    key = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
    iv = bytes.fromhex("cafebabefacedbaddecaf888")
    pt = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    )
    aad = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    h = open_handle(dev)
    ses = session(dev, h, GCM, key)
    done = dev.call(authcrypt_chain(h, ses, ENC, iv, aad, pt))
    assert done.status == OK
    assert done.bufs[0][-16:].hex() == "5bc94fbc3221a5db94fae95ae7121a47"
    assert done.bufs[0][:-16] == AESGCM(key).encrypt(iv, pt, aad)[:-16]
    back = dev.call(authcrypt_chain(h, ses, DEC, iv, aad, done.bufs[0]))
    assert back.status == OK and back.bufs[0] == pt


@pytest.mark.parametrize("keylen", [16, 24, 32])
def test_gcm_matches_cryptography(dev: VirtioCryptodev, keylen: int) -> None:
    rng = random.Random(50 + keylen)
    h = open_handle(dev)
    key = rng.randbytes(keylen)
    ses = session(dev, h, GCM, key)
    for size, aadlen in [(0, 0), (0, 20), (1, 0), (16, 13), (1000, 4096), (200_000, 100)]:
        iv, pt, aad = rng.randbytes(12), rng.randbytes(size), rng.randbytes(aadlen)
        want = AESGCM(key).encrypt(iv, pt, aad)
        done = dev.call(authcrypt_chain(h, ses, ENC, iv, aad, pt))
        assert done.status == OK and done.bufs[0] == want, (size, aadlen)
        back = dev.call(authcrypt_chain(h, ses, DEC, iv, aad, want))
        assert back.status == OK and (back.bufs[0] if size else b"") == pt


def test_gcm_tag_failure_and_short_tags(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    key, iv, aad, pt = b"k" * 16, b"i" * 12, b"header", b"p" * 100
    ses = session(dev, h, GCM, key)
    full = AESGCM(key).encrypt(iv, pt, aad)
    for bad in (full[:-1] + bytes([full[-1] ^ 1]), bytes([full[0] ^ 0x80]) + full[1:]):
        done = dev.call(authcrypt_chain(h, ses, DEC, iv, aad, bad))
        assert done.status == BADTAG and done.bufs[0] == bytes(100)  # nothing written
    assert dev.call(authcrypt_chain(h, ses, DEC, iv, b"other", full)).status == BADTAG
    for tag_len in (4, 8, 12, 13, 15):
        done = dev.call(authcrypt_chain(h, ses, ENC, iv, aad, pt, tag_len))
        assert done.status == OK and done.bufs[0] == full[:100] + full[100 : 100 + tag_len]
        back = dev.call(authcrypt_chain(h, ses, DEC, iv, aad, done.bufs[0], tag_len))
        assert back.status == OK and back.bufs[0] == pt


def test_gcm_malformed(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    gcm = session(dev, h, GCM, b"k" * 16)
    cbc = session(dev, h, CBC, b"k" * 16)
    iv, pt = b"i" * 12, b"p" * 32

    def fresh() -> list[Buf]:  # descriptors remember their address: never reuse one
        return authcrypt_chain(h, gcm, ENC, iv, b"", pt)

    cases = [
        ("crypt on a gcm session", crypt_chain(h, gcm, ENC, iv, pt), INVAL),
        ("authcrypt on cbc", authcrypt_chain(h, cbc, ENC, b"i" * 12, b"", pt), INVAL),
        ("iv 16", authcrypt_chain(h, gcm, ENC, b"i" * 16, b"", pt), INVAL),
        ("no iv", authcrypt_chain(h, gcm, ENC, b"", b"", pt), INVAL),
        ("tag 17", authcrypt_chain(h, gcm, ENC, iv, b"", pt, 17), INVAL),
        ("tag 5", authcrypt_chain(h, gcm, ENC, iv, b"", pt, 5), INVAL),
        ("aad over a page", authcrypt_chain(h, gcm, ENC, iv, bytes(4097), pt), INVAL),
        ("decrypt shorter than the tag", authcrypt_chain(h, gcm, DEC, iv, b"", b"x" * 15,
                                                        dst_len=0), INVAL),
        ("dst without room for the tag", authcrypt_chain(h, gcm, ENC, iv, b"", pt,
                                                        dst_len=32), BADMSG),
        # Without it the IV and data are read as the header: nonsense sizes.
        ("aead header missing", [fresh()[0], *fresh()[2:]], INVAL),
        ("aead reserved set", [fresh()[0], out(struct.pack("<4I", 0, 0, 1, 0)), *fresh()[2:]],
         INVAL),
        ("aad shorter than said", [fresh()[0], out(struct.pack("<4I", 8, 0, 0, 0)),
                                   *fresh()[2:]], BADMSG),
        ("flags set", [out(fresh()[0].data[:34] + b"\1\0" + fresh()[0].data[36:]),
                       *fresh()[1:]], INVAL),
    ]  # fmt: skip
    failures = [
        f"{name}: {done.status} != {want}"
        for name, chain, want in cases
        if (done := dev.call(chain)).status != want
    ]
    assert not failures, "\n".join(failures)


def test_gcm_needs_the_feature(qemu_binary: Path) -> None:
    qt, d = boot(qemu_binary, "aead=off")
    try:
        assert d.has("VCD_F_ALGS") and not d.has("VCD_F_AEAD")
        h = open_handle(d)
        assert d.call(create_chain(h, GCM, b"k" * 16)).status == NOTSUPP
    finally:
        qt.close()

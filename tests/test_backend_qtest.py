"""The QEMU backend under a hostile guest, driven through QEMU's qtest accelerator.

A Python program plays the guest (tests/qtest_guest.py): valid requests are checked
against pyca/cryptography, every kind of malformed request must get an error status,
and a seeded fuzz of half-valid chains must leave QEMU alive and answering.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cdev.vm import qemu_build
from tests.qtest_guest import (
    DATA_ADDR,
    INFO_LEN,
    Buf,
    C,
    DeviceBroken,
    Done,
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

OK = C["VCD_S_OK"]
BADMSG, INVAL, NOHANDLE = C["VCD_S_BADMSG"], C["VCD_S_INVAL"], C["VCD_S_NOHANDLE"]
NOSESSION, NOTSUPP, LIMIT = C["VCD_S_NOSESSION"], C["VCD_S_NOTSUPP"], C["VCD_S_LIMIT"]
AES, HMAC = C["VCD_CIPHER_AES_CBC"], C["VCD_MAC_SHA256_HMAC"]
ENC, DEC = C["VCD_OP_ENCRYPT"], C["VCD_OP_DECRYPT"]
IOCTL = C["VCD_CALL_IOCTL"]
FUZZ_COUNT = int(os.environ.get("CDEV_FUZZ_COUNT", "20000"))
SAN_FUZZ_COUNT = int(os.environ.get("CDEV_SAN_FUZZ_COUNT", "20000"))


@pytest.fixture(scope="module")
def qemu_binary() -> Path:
    return qemu_build.ensure_qemu()


def start(qemu: Path, *extra: str) -> tuple[Qtest, VirtioCryptodev]:
    qt = Qtest(qemu, qemu_build.firmware_dirs(), ["-device", "virtio-cryptodev-pci", *extra])
    return qt, VirtioCryptodev(qt)


@pytest.fixture
def dev(qemu_binary: Path) -> Iterator[VirtioCryptodev]:
    qt, d = start(qemu_binary, "-global", "virtio-cryptodev-pci.engine=builtin")
    yield d
    assert qt.alive(), qt.stderr_text()
    qt.close()


def aes_cbc(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(data) + op.finalize()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def open_handle(d: VirtioCryptodev) -> int:
    done = d.call(open_chain())
    assert done.status == OK
    return done.resp[1]


def new_session(d: VirtioCryptodev, h: int, key: bytes = b"", mackey: bytes | None = None) -> int:
    done = d.call(
        create_chain(h, AES if key else 0, key, HMAC if mackey is not None else 0, mackey or b"")
    )
    assert done.status == OK, done.resp
    return done.resp[2]


# ------------------------------------------------------------------ valid traffic


def test_identity_and_negotiation(dev: VirtioCryptodev) -> None:
    assert dev.device_features_hi & 1  # VIRTIO_F_VERSION_1
    assert dev.num_queues == 1
    assert dev.max_qsize == C["VCD_QUEUE_SIZE"]


@pytest.mark.parametrize("keylen", [16, 24, 32])
def test_aes_cbc_known_answers(dev: VirtioCryptodev, keylen: int) -> None:
    rng = random.Random(keylen)
    h = open_handle(dev)
    key = rng.randbytes(keylen)
    ses = new_session(dev, h, key)
    for size in (16, 48, 4096, 65536, C["VCD_MAX_DATA_LEN"]):
        iv, plain = rng.randbytes(16), rng.randbytes(size)
        enc = dev.call(crypt_chain(h, ses, ENC, iv, plain))
        assert enc.status == OK
        assert enc.bufs[0] == aes_cbc(key, iv, plain, True)
        dec = dev.call(crypt_chain(h, ses, DEC, iv, enc.bufs[0]))
        assert dec.status == OK and dec.bufs[0] == plain
    assert dev.call(destroy_chain(h, ses)).status == OK
    assert dev.call(close_chain(h)).status == OK


@pytest.mark.parametrize("keylen", [0, 1, 32, 64, 65, 512])
def test_hmac_sha256_known_answers(dev: VirtioCryptodev, keylen: int) -> None:
    rng = random.Random(1000 + keylen)
    h = open_handle(dev)
    mackey = rng.randbytes(keylen)
    ses = new_session(dev, h, mackey=mackey)
    for size in (0, 1, 63, 64, 1000, 100_000):
        data = rng.randbytes(size)
        done = dev.call(crypt_chain(h, ses, ENC, b"", data, cipher=False, mac=True))
        assert done.status == OK
        assert done.bufs[0] == hmac_sha256(mackey, data)


def test_cipher_and_mac_session(dev: VirtioCryptodev) -> None:
    # cryptodev-linux semantics: the MAC always covers the plaintext.
    h = open_handle(dev)
    key, mackey, iv, plain = b"k" * 32, b"m" * 40, b"i" * 16, bytes(range(256)) * 4
    ses = new_session(dev, h, key, mackey)
    enc = dev.call(crypt_chain(h, ses, ENC, iv, plain, mac=True))
    assert enc.status == OK
    assert enc.bufs[0] == aes_cbc(key, iv, plain, True)
    assert enc.bufs[1] == hmac_sha256(mackey, plain)
    dec = dev.call(crypt_chain(h, ses, DEC, iv, enc.bufs[0], mac=True))
    assert dec.status == OK and dec.bufs[0] == plain
    assert dec.bufs[1] == hmac_sha256(mackey, plain)


def test_session_info(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    ses = new_session(dev, h, b"k" * 16, b"m")
    done = dev.call(info_chain(h, ses))
    assert done.status == OK
    names = [done.bufs[0][i * 64 : (i + 1) * 64].split(b"\0")[0] for i in range(4)]
    assert names[0] == b"cbc(aes)" and names[2] == b"hmac(sha256)"
    assert names[1] == b"qcrypto-builtin" and names[3] == b"gnutls"


def test_whole_ring_per_kick(dev: VirtioCryptodev) -> None:
    """Many requests in one kick, over several sessions: all answered, all right."""
    rng = random.Random(7)
    h = open_handle(dev)
    keys = [rng.randbytes(16) for _ in range(4)]
    sessions = [new_session(dev, h, k) for k in keys]
    chains, expect = [], []
    for i in range(25):  # 25 chains x 4 descriptors = 100 of 128 slots
        s = i % 4
        iv, data = rng.randbytes(16), rng.randbytes(16 * rng.randint(1, 512))
        chains.append(crypt_chain(h, sessions[s], ENC, iv, data))
        expect.append(aes_cbc(keys[s], iv, data, True))
    for done, want in zip(dev.submit(chains), expect, strict=True):
        assert done.status == OK and done.bufs[0] == want


def test_sessions_belong_to_their_handle(dev: VirtioCryptodev) -> None:
    a, b = open_handle(dev), open_handle(dev)
    ses = new_session(dev, a, b"k" * 16)
    iv, data = b"\0" * 16, b"\1" * 16
    assert dev.call(crypt_chain(b, ses, ENC, iv, data)).status == NOSESSION
    assert dev.call(destroy_chain(b, ses)).status == NOSESSION
    assert dev.call(close_chain(a)).status == OK
    # The handle and its sessions are gone; a reused slot gets a new handle value.
    assert dev.call(crypt_chain(a, ses, ENC, iv, data)).status == NOHANDLE
    assert dev.call(close_chain(a)).status == NOHANDLE
    c = open_handle(dev)
    assert c != a
    assert dev.call(crypt_chain(c, ses, ENC, iv, data)).status == NOSESSION


def test_limits(dev: VirtioCryptodev) -> None:
    # Session budgets: tests/test_device_protocol_qtest.py.
    handles = [open_handle(dev)]
    while len(handles) < C["VCD_MAX_HANDLES"]:
        n = min(60, C["VCD_MAX_HANDLES"] - len(handles))
        for done in dev.submit([open_chain() for _ in range(n)]):
            assert done.status == OK
            handles.append(done.resp[1])
    assert dev.call(open_chain()).status == LIMIT
    assert dev.call(close_chain(handles[5])).status == OK
    assert dev.call(open_chain()).status == OK


def test_reset_frees_everything(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    new_session(dev, h, b"k" * 16)
    dev.init()
    assert dev.call(close_chain(h)).status == NOHANDLE
    assert dev.call(close_chain(open_handle(dev))).status == OK


def test_destroy_and_close_while_crypt_in_flight(dev: VirtioCryptodev) -> None:
    """One kick: big crypts, then destroy their session and close the handle.

    The crypts are with workers when the destroy and close run; the session must live
    until they are done, and they must still answer correctly.
    """
    rng = random.Random(99)
    h = open_handle(dev)
    key = rng.randbytes(32)
    ses = new_session(dev, h, key)
    iv = rng.randbytes(16)
    data = [rng.randbytes(C["VCD_MAX_DATA_LEN"]) for _ in range(4)]
    chains = [crypt_chain(h, ses, ENC, iv, d) for d in data]
    chains += [destroy_chain(h, ses), close_chain(h)]
    dones = dev.submit(chains)
    for d, done in zip(data, dones[:4], strict=True):
        assert done.status == OK and done.bufs[0] == aes_cbc(key, iv, d, True)
    assert dones[4].status == OK and dones[5].status == OK
    assert dev.call(close_chain(h)).status == NOHANDLE


def test_reset_with_requests_in_flight(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    ses = new_session(dev, h, b"k" * 16, b"m" * 32)
    data = bytes(C["VCD_MAX_DATA_LEN"])
    dev.post([crypt_chain(h, ses, ENC, b"\0" * 16, data, mac=True) for _ in range(20)])
    dev.init()  # resets at once: the device must wait for its workers, then free all
    assert dev.qt.alive(), dev.qt.stderr_text()
    assert dev.call(close_chain(h)).status == NOHANDLE
    h = open_handle(dev)
    ses = new_session(dev, h, b"k" * 16)
    assert dev.call(crypt_chain(h, ses, ENC, b"\0" * 16, b"\1" * 16)).status == OK


def test_many_handles_in_flight_at_once(dev: VirtioCryptodev) -> None:
    """Requests of many handles and sessions in one batch, each answered for its own key."""
    rng = random.Random(5)
    handles = [open_handle(dev) for _ in range(8)]
    keys = {h: rng.randbytes(24) for h in handles}
    sessions = {h: new_session(dev, h, keys[h]) for h in handles}
    for _ in range(5):
        chains, want = [], []
        for _ in range(25):  # 5 descriptors each: 125 of 128
            h = rng.choice(handles)
            iv, d = rng.randbytes(16), rng.randbytes(16 * rng.randint(1, 2048))
            op = rng.choice([ENC, DEC])
            chains.append(crypt_chain(h, sessions[h], op, iv, d))
            want.append(aes_cbc(keys[h], iv, d, op == ENC))
        for done, w in zip(dev.submit(chains), want, strict=True):
            assert done.status == OK and done.bufs[0] == w


@pytest.mark.parametrize(
    ("engine", "message"),
    [("host", "/dev/crypto"), ("bogus", "engine must be auto, builtin or host")],
)
def test_engine_property(qemu_binary: Path, engine: str, message: str) -> None:
    if engine == "host" and os.access("/dev/crypto", os.R_OK | os.W_OK):
        pytest.skip("this host has /dev/crypto: engine=host is valid here")
    argv = [str(qemu_binary), "-machine", "pc,accel=qtest", "-qtest", "null", "-display", "none"]
    for d in qemu_build.firmware_dirs():
        argv += ["-L", str(d)]
    argv += ["-nodefaults", "-device", f"virtio-cryptodev-pci,engine={engine}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and message in result.stderr


def test_open_close_cycles_do_not_grow_fds_or_memory(dev: VirtioCryptodev) -> None:
    pid = dev.qt.proc.pid

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def rss_kib() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cycle(n: int) -> None:
        for _ in range(n // 20):
            opened = dev.submit([open_chain() for _ in range(20)])
            hs = [d.resp[1] for d in opened]
            created = dev.submit([create_chain(h, AES, b"k" * 32, HMAC, b"m" * 512) for h in hs])
            assert all(d.status == OK for d in created)
            assert all(d.status == OK for d in dev.submit([close_chain(h) for h in hs]))

    cycle(200)  # warm up allocator pools
    fds0, rss0 = fds(), rss_kib()
    cycle(2000)
    assert fds() == fds0
    assert rss_kib() - rss0 < 4096, f"RSS grew from {rss0} to {rss_kib()} KiB"


# ------------------------------------------------------------------ malformed requests


def malformed_cases(h: int, ses: int, mses: int) -> list[tuple[str, list[Buf], int]]:
    iv, blk = b"\0" * 16, b"\0" * 32
    R = C["VCD_CMD_CRYPT"]
    good_crypt = dict(handle=h, cmd=R, session=ses, length=32, ivlen=16)
    cases: list[tuple[str, list[Buf], int]] = [
        ("short request", [out(b"\0" * 20), into(16)], BADMSG),
        ("no payload at all", [into(16)], BADMSG),
        ("open with trailing bytes", [out(req(0) + b"x"), into(16)], BADMSG),
        ("open with big response area", [out(req(0)), into(64)], BADMSG),
        ("open with handle", [out(req(0, handle=h)), into(16)], INVAL),
        ("open with cmd", [out(req(0, cmd=1)), into(16)], INVAL),
        ("session2 set", [out(req(0, session2=1)), into(16)], INVAL),
        ("unknown call", [out(req(3)), into(16)], INVAL),
        ("huge call", [out(req(0xFFFFFFFF)), into(16)], INVAL),
        ("close unknown handle", close_chain(0x7777), NOHANDLE),
        ("close handle 0", close_chain(0), NOHANDLE),
        ("close slot beyond table", close_chain(0x0001FFFF), NOHANDLE),
        ("close with session", [out(req(1, handle=h, session=ses)), into(16)], INVAL),
        ("unknown cmd", [out(req(IOCTL, handle=h, cmd=99)), into(16)], NOTSUPP),
        ("cmd 0", [out(req(IOCTL, handle=h, cmd=0)), into(16)], NOTSUPP),
        ("create unknown cipher", create_chain(h, 3, b"k" * 16), NOTSUPP),
        ("create unknown mac", create_chain(h, 0, b"", 8, b"m"), NOTSUPP),
        ("create nothing", create_chain(h, 0, b""), INVAL),
        ("create keylen 15", create_chain(h, AES, b"k" * 15), INVAL),
        ("create keylen 64", create_chain(h, AES, b"k" * 64), INVAL),
        ("create key without cipher", create_chain(h, 0, b"k" * 16, HMAC, b"m"), INVAL),
        ("create mackey too long", create_chain(h, 0, b"", HMAC, b"m" * 513), INVAL),
        (
            "create keylen lies (huge)",
            [
                out(req(IOCTL, handle=h, cmd=1, cipher=AES, keylen=0xFFFFFFF0)),
                out(b"k" * 16),
                into(16),
            ],
            INVAL,
        ),
        (
            "create mackeylen overflows a 32-bit sum",
            [out(req(IOCTL, handle=h, cmd=1, mac=HMAC, mackeylen=0xFFFFFFFF)), into(16)],
            INVAL,
        ),
        (
            "create key shorter than keylen",
            [out(req(IOCTL, handle=h, cmd=1, cipher=AES, keylen=32)), out(b"k" * 16), into(16)],
            BADMSG,
        ),
        (
            "create with op set",
            [
                out(req(IOCTL, handle=h, cmd=1, cipher=AES, keylen=16, op=1)),
                out(b"k" * 16),
                into(16),
            ],
            INVAL,
        ),
        ("create on unknown handle", create_chain(0x4242, AES, b"k" * 16), NOHANDLE),
        ("destroy unknown session", destroy_chain(h, 12345), NOSESSION),
        ("destroy session 0", destroy_chain(h, 0), NOSESSION),
        ("crypt unknown session", crypt_chain(h, 999, ENC, iv, blk), NOSESSION),
        ("crypt unknown handle", crypt_chain(0x10001 + 77, ses, ENC, iv, blk), NOHANDLE),
        ("crypt op 2", crypt_chain(h, ses, 2, iv, blk), INVAL),
        ("crypt op 0xffff", crypt_chain(h, ses, 0xFFFF, iv, blk), INVAL),
        ("crypt len not a block multiple", crypt_chain(h, ses, ENC, iv, b"\0" * 33), INVAL),
        ("crypt short iv", crypt_chain(h, ses, ENC, b"\0" * 8, blk), INVAL),
        (
            "crypt iv on a mac-only session",
            crypt_chain(h, mses, ENC, iv, blk, cipher=False, mac=True),
            INVAL,
        ),
        (
            "crypt len over the maximum",
            [
                out(req(IOCTL, **good_crypt | {"length": C["VCD_MAX_DATA_LEN"] + 16})),
                out(iv),
                into(16),
            ],
            INVAL,
        ),
        (
            "crypt huge len",
            [
                out(req(IOCTL, **good_crypt | {"length": 0xFFFFFFF0})),
                out(iv),
                out(blk),
                into(32),
                into(16),
            ],
            INVAL,
        ),
        (
            "crypt flags set",
            [out(req(IOCTL, **good_crypt | {"flags": 1})), out(iv), out(blk), into(32), into(16)],
            INVAL,
        ),
        (
            "crypt with cipher field",
            [
                out(req(IOCTL, **good_crypt | {"cipher": AES})),
                out(iv),
                out(blk),
                into(32),
                into(16),
            ],
            INVAL,
        ),
        (
            "crypt src shorter than len",
            [out(req(IOCTL, **good_crypt)), out(iv), out(blk[:16]), into(32), into(16)],
            BADMSG,
        ),
        (
            "crypt dst shorter than len",
            [out(req(IOCTL, **good_crypt)), out(iv), out(blk), into(16), into(16)],
            BADMSG,
        ),
        ("crypt dst missing", [out(req(IOCTL, **good_crypt)), out(iv), out(blk), into(16)], BADMSG),
        (
            "crypt extra mac area",
            [out(req(IOCTL, **good_crypt)), out(iv), out(blk), into(32), into(32), into(16)],
            BADMSG,
        ),
        (
            "crypt dst readable instead of writable",
            [out(req(IOCTL, **good_crypt)), out(iv), out(blk), out(blk), into(16)],
            BADMSG,
        ),
        (
            "info short area",
            [out(req(IOCTL, handle=h, cmd=4, session=ses)), into(100), into(16)],
            BADMSG,
        ),
        ("info without area", [out(req(IOCTL, handle=h, cmd=4, session=ses)), into(16)], BADMSG),
        (
            "info with len",
            [out(req(IOCTL, handle=h, cmd=4, session=ses, length=16)), into(INFO_LEN), into(16)],
            INVAL,
        ),
    ]
    return cases


def test_malformed_requests_get_error_statuses(dev: VirtioCryptodev) -> None:
    h = open_handle(dev)
    ses = new_session(dev, h, b"k" * 16)
    mses = new_session(dev, h, mackey=b"m" * 16)
    failures = []
    for name, chain, want in malformed_cases(h, ses, mses):
        done = dev.call(chain)
        if done.status != want:
            failures.append(f"{name}: status {done.status}, want {want}")
    assert not failures, "\n".join(failures)
    # After all that, the handle and sessions still work.
    iv, data = b"\2" * 16, b"\3" * 64
    done = dev.call(crypt_chain(h, ses, ENC, iv, data))
    assert done.status == OK and done.bufs[0] == aes_cbc(b"k" * 16, iv, data, True)


def test_no_room_for_a_response(dev: VirtioCryptodev) -> None:
    # Nothing writable (or too little): the device can only answer a zero length.
    assert dev.call([out(req(0))]).used_len == 0
    assert dev.call([out(req(0)), into(8)]).used_len == 0
    assert dev.call(open_chain()).status == OK


def test_malformed_rings_only_break_the_ring(dev: VirtioCryptodev) -> None:
    """Ring-level faults are the virtio core's business: the device is flagged, QEMU lives."""
    # Readable after writable: virtqueue_pop() refuses the chain and sets NEEDS_RESET.
    with pytest.raises(DeviceBroken):
        dev.call([into(16), out(req(0))])
    assert dev.qt.alive()
    dev.init()
    assert dev.call(open_chain()).status == OK
    # An address outside RAM is bounce-buffered by the core: whatever the device reads
    # there, it answers (or the ring is flagged) and QEMU lives.
    try:
        dev.call([Buf(data=req(0), size=48, addr=0xFFFFFFF000), into(16)])
    except DeviceBroken:
        dev.init()
    assert dev.qt.alive()
    assert dev.call(open_chain()).status == OK


# ------------------------------------------------------------------ fuzzing


FIELDS = ("call", "handle", "cmd", "session", "cipher", "mac", "keylen", "mackeylen")
FIELDS16 = ("op", "flags")
FIELDS_TAIL = ("length", "ivlen", "session2")


# Protocol knowledge for the fuzz: cipher -> (key sizes, IV size, block size), and
# MAC -> (digest size, keyed).
FUZZ_CIPHERS = {
    C["VCD_CIPHER_AES_CBC"]: ((16, 24, 32), 16, 16),
    C["VCD_CIPHER_AES_ECB"]: ((16, 24, 32), 0, 16),
    C["VCD_CIPHER_AES_CTR"]: ((16, 24, 32), 16, 1),
    C["VCD_CIPHER_AES_XTS"]: ((32, 64), 16, 16),
    C["VCD_CIPHER_3DES_CBC"]: ((24,), 8, 8),
    C["VCD_CIPHER_AES_GCM"]: ((16, 24, 32), 12, 1),
}
FUZZ_MACS = {
    C[f"VCD_MAC_{n}"]: (size, n.endswith("HMAC"))
    for n, size in [
        ("MD5", 16), ("SHA1", 20), ("SHA224", 28), ("SHA256", 32), ("SHA384", 48),
        ("SHA512", 64), ("MD5_HMAC", 16), ("SHA1_HMAC", 20), ("SHA224_HMAC", 28),
        ("SHA256_HMAC", 32), ("SHA384_HMAC", 48), ("SHA512_HMAC", 64),
    ]
}  # fmt: skip
HASH_FLAGS = C["VCD_CF_HASH_RESET"] | C["VCD_CF_HASH_FINAL"]


def valid_chain(
    rng: random.Random, handles: list[int], sessions: list[tuple[int, int, int, int]]
) -> list[Buf]:
    """A well-formed request for the current handles and sessions (h, session, cipher,
    mac): every call and command, every algorithm, chained and explicit IVs, IVs
    written back, multi-part hash flags, hash copies."""
    kind = rng.choice(
        ["open", "close", "create", "create", "crypt", "crypt", "crypt", "destroy", "info",
         "copy"]
    )  # fmt: skip
    if kind == "open" or not handles:
        return open_chain()
    h = rng.choice(handles)
    mine = [(s, c, m) for hh, s, c, m in sessions if hh == h]
    if kind == "close":
        return close_chain(h)
    if kind == "create" or not mine:
        cipher = rng.choice([0, *FUZZ_CIPHERS])
        mac = rng.choice([*FUZZ_MACS]) if cipher == 0 else rng.choice([0, 0, *FUZZ_MACS])
        if cipher == C["VCD_CIPHER_AES_GCM"]:
            mac = 0
        key = rng.randbytes(rng.choice(FUZZ_CIPHERS[cipher][0])) if cipher else b""
        keyed = mac and FUZZ_MACS[mac][1]
        mackey = rng.randbytes(rng.choice([0, 16, 64, 512])) if keyed else b""
        return create_chain(h, cipher, key, mac, mackey)
    ses, cipher, mac = rng.choice(mine)
    if kind == "destroy":
        return destroy_chain(h, ses)
    if kind == "info":
        return info_chain(h, ses)
    if kind == "copy":
        return hash_copy_chain(h, ses, rng.choice(mine)[0])
    if cipher == C["VCD_CIPHER_AES_GCM"]:
        op = rng.choice([ENC, DEC])
        tag = rng.choice([0, 4, 8, 12, 16])
        n = rng.choice([0, 1, 16, 100, 4096, C["VCD_MAX_DATA_LEN"] - 16])
        aad = rng.randbytes(rng.choice([0, 13, 4096]))
        src = bytes(n + (tag or 16 if op == DEC else 0))
        return authcrypt_chain(h, ses, op, rng.randbytes(12), aad, src, tag)
    block = FUZZ_CIPHERS[cipher][2] if cipher else 1
    ivlen = FUZZ_CIPHERS[cipher][1] if cipher else 0
    n = block * rng.choice([0, 1, 2, 3, 64, 256, 4096, C["VCD_MAX_DATA_LEN"] // block])
    iv = rng.randbytes(ivlen) if ivlen and rng.random() < 0.7 else b""
    flags = rng.choice([0, 1, 2, 3, 3, 3]) if mac else 0
    if ivlen and rng.random() < 0.3:
        flags |= C["VCD_CF_IV_OUT"]
    return crypt_chain(
        h, ses, rng.choice([ENC, DEC]), iv, bytes(n), cipher=bool(cipher),
        mac=bool(flags & C["VCD_CF_HASH_FINAL"]), flags=flags,
        ivout=ivlen if flags & C["VCD_CF_IV_OUT"] else 0,
        maclen=FUZZ_MACS[mac][0] if mac else None,
    )  # fmt: skip


def mutate(rng: random.Random, chain: list[Buf]) -> list[Buf]:
    """One to three defects: a field, a length, a missing/extra/flipped buffer."""
    for _ in range(rng.randint(1, 3)):
        what = rng.random()
        if what < 0.45:
            vals = list(struct.unpack("<8I2H3I", chain[0].data[:48].ljust(48, b"\0")))
            i = rng.randrange(len(vals))
            bits = 16 if i in (8, 9) else 32
            vals[i] = rng.choice(
                [
                    0,
                    1,
                    2,
                    3,
                    15,
                    16,
                    17,
                    32,
                    48,
                    64,
                    512,
                    513,
                    (1 << bits) - 1,
                    rng.randrange(1 << bits),
                ]
            )
            chain[0] = out(struct.pack("<8I2H3I", *vals))
        elif what < 0.6 and len(chain) > 1:
            del chain[rng.randrange(len(chain))]
        elif what < 0.75:
            b = chain[rng.randrange(len(chain))]
            delta = rng.choice([-16, -1, 1, 16, 4096])
            size = max(1, (len(b.data) if not b.writable else b.size) + delta)
            chain[chain.index(b)] = into(size) if b.writable else out(bytes(size))
        elif what < 0.85:
            pos = rng.randrange(len(chain) + 1)
            extra = into(rng.choice([1, 16, 32])) if rng.random() < 0.5 else out(bytes(16))
            chain.insert(pos, extra)
        elif what < 0.93:
            b = chain[rng.randrange(len(chain))]
            size = len(b.data) if not b.writable else b.size
            chain[chain.index(b)] = out(bytes(size)) if b.writable else into(size)
        else:
            chain[0] = out(chain[0].data[: rng.randrange(48)])
    # Keep readable before writable most of the time: otherwise the core flags the ring.
    if rng.random() < 0.97:
        chain.sort(key=lambda b: b.writable)
    return [b for b in chain if b.writable or b.data] or [into(16)]


def track(
    chain: list[Buf],
    done: Done,
    handles: list[int],
    sessions: list[tuple[int, int, int, int]],
) -> None:
    """Follow the device's state from the answers, to keep aiming at live objects."""
    if done.status != OK or not chain[0].data or len(chain[0].data) < 48:
        return
    call, h, cmd, ses, cipher, mac = struct.unpack_from("<6I", chain[0].data)
    if call == 0:
        handles.append(done.resp[1])
    elif call == 1:
        if h in handles:
            handles.remove(h)
        sessions[:] = [t for t in sessions if t[0] != h]
    elif cmd == 1:
        sessions.append((h, done.resp[2], cipher, mac))
    elif cmd == 2:
        sessions[:] = [t for t in sessions if t[:2] != (h, ses)]


def run_fuzz(qemu: Path, count: int, env: dict[str, str] | None = None) -> tuple[Counter[int], str]:
    seed = int(os.environ.get("CDEV_FUZZ_SEED", "20240601"))
    rng = random.Random(seed)
    qt = Qtest(
        qemu,
        qemu_build.firmware_dirs(),
        ["-device", "virtio-cryptodev-pci,engine=builtin"],
        env=env,
    )
    dev = VirtioCryptodev(qt)
    statuses: Counter[int] = Counter()
    handles: list[int] = []
    sessions: list[tuple[int, int, int, int]] = []
    sent = resets = 0
    try:
        while sent < count:
            # Keep a population of real handles and sessions to aim at.
            if len(handles) < 4:
                for done in dev.submit([open_chain() for _ in range(2)]):
                    if done.status == OK:
                        handles.append(done.resp[1])
            batch, ndesc = [], 0
            while ndesc < 100 and len(batch) < 24:
                chain = valid_chain(rng, handles, sessions)
                if rng.random() < 0.75:
                    chain = mutate(rng, chain)
                if ndesc + len(chain) > 120:
                    break
                batch.append(chain)
                ndesc += len(chain)
            try:
                for chain, done in zip(batch, dev.submit(batch), strict=True):
                    if done.used_len < 16:
                        statuses[-1] += 1
                        continue
                    statuses[done.status] += 1
                    track(chain, done, handles, sessions)
            except DeviceBroken:
                resets += 1
                dev.init()
                handles, sessions = [], []
            sent += len(batch)
            assert qt.alive(), qt.stderr_text()
        # Still answering, still right.
        h = open_handle(dev)
        ses = new_session(dev, h, b"z" * 32)
        done = dev.call(crypt_chain(h, ses, ENC, b"\0" * 16, b"\1" * 32))
        assert done.bufs[0] == aes_cbc(b"z" * 32, b"\0" * 16, b"\1" * 32, True)
    finally:
        alive = qt.alive()
        qt.close()
        err = qt.final_stderr
    print(f"fuzz seed {seed}: {sent} chains, {resets} ring resets, statuses {dict(statuses)}")
    assert alive, err
    assert sum(statuses.values()) > count // 2
    assert statuses[OK] > count // 10 and statuses[BADMSG] > 0 and statuses[INVAL] > 0
    return statuses, err


def test_fuzz_half_valid_chains(qemu_binary: Path) -> None:
    _, err = run_fuzz(qemu_binary, FUZZ_COUNT)
    assert "runtime error" not in err and "Sanitizer" not in err, err


@pytest.mark.slow
def test_fuzz_under_sanitizers() -> None:
    """The same fuzz on a QEMU built with ASan/UBSan: no report, no leak of ours."""
    qemu = qemu_build.ensure_qemu(sanitizers=True)
    env = {
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    _, err = run_fuzz(qemu, SAN_FUZZ_COUNT, env)
    assert "runtime error" not in err, err
    assert "ERROR: AddressSanitizer" not in err, err
    # QEMU itself leaks a little at exit; none of it may come from our device.
    leaks = err.split("ERROR: LeakSanitizer", 1)[1] if "ERROR: LeakSanitizer" in err else ""
    assert "vcd_" not in leaks and "virtio-cryptodev" not in leaks, leaks


def test_guest_cannot_touch_host_fds(dev: VirtioCryptodev) -> None:
    """Handles are table slots with a generation, not fds: fd-like numbers are unknown."""
    for fd in (0, 1, 2, 3, 4, 5, 10, 255):
        assert dev.call(close_chain(fd)).status == NOHANDLE
    assert dev.qt.alive()


def test_unused_area_left_alone(dev: VirtioCryptodev) -> None:
    # A failed crypt must not write into the destination buffer.
    h = open_handle(dev)
    ses = new_session(dev, h, b"k" * 16)
    chain = crypt_chain(h, ses, 2, b"\0" * 16, b"\5" * 32)
    marker = b"\xaa" * 32
    dev.qt.write(DATA_ADDR + 0x100000, marker)
    chain[3].addr = DATA_ADDR + 0x100000
    done = dev.call(chain)
    assert done.status == INVAL and done.bufs[0] == marker
    assert struct.calcsize("<8I2H3I") == 48

"""The guest frontend module, through our QEMU device, in a booted Debian guest.

One guest serves the module. The guest-side halves of the tests are in this very file
(``python test_frontend.py <check>`` runs in the guest, which sees the host's root over
9p) and print JSON; the host side asserts on it, on QEMU's open descriptors and on the
guest's console (no oops, no warning).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdev import cryptodev_abi as abi

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve()
NODE = "/dev/cryptodev0"
MAX_DATA_LEN = 256 * 1024  # VCD_MAX_DATA_LEN
BAD_PTR = 16  # an address no process maps
CIOC_UNKNOWN = (3 << 30) | (4 << 16) | (ord("c") << 8) | 200
COP_FLAG_WRITE_IV = 1 << 2
COP_FLAG_UPDATE = 1 << 0
COP_FLAG_AEAD_TLS_TYPE = 1 << 4
SESSIONS_PER_FD = 4096  # at least this many sessions on one open file


# ---- guest side ---------------------------------------------------------------------


def _errno(fd: int, req: int, arg: Any) -> int:
    try:
        fcntl.ioctl(fd, req, arg)
    except OSError as exc:
        return exc.errno or -1
    return 0


class Dev:
    """A minimal cryptodev client over ctypes, keeping its buffers alive."""

    def __init__(self, path: str = NODE) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self._keep: list[Any] = []

    def close(self) -> None:
        os.close(self.fd)

    def buf(self, data: bytes | int) -> int:
        b = (
            ctypes.create_string_buffer(data)
            if isinstance(data, int)
            else (ctypes.create_string_buffer(data, len(data)))
        )
        self._keep.append(b)
        return ctypes.addressof(b)

    def sop(
        self,
        cipher: int = abi.CRYPTO_AES_CBC,
        key: bytes = bytes(16),
        mac: int = 0,
        mackey: bytes = b"",
        keylen: int | None = None,
        keyp: int | None = None,
        mackeylen: int | None = None,
    ) -> abi.SessionOp:
        return abi.SessionOp(
            cipher=cipher,
            mac=mac,
            keylen=len(key) if keylen is None else keylen,
            key=self.buf(key) if keyp is None else keyp,
            mackeylen=len(mackey) if mackeylen is None else mackeylen,
            mackey=self.buf(mackey) if mackey else None,
        )

    def session(self, **kw: Any) -> int:
        sop = self.sop(**kw)
        fcntl.ioctl(self.fd, abi.CIOCGSESSION, sop)
        return int(sop.ses)

    def cop(
        self,
        ses: int,
        op: int,
        data: bytes,
        iv: bytes | None = None,
        flags: int = 0,
        length: int | None = None,
        **ptrs: int,
    ) -> tuple[abi.CryptOp, int, int]:
        dst = self.buf(max(len(data), 1))
        mac = self.buf(32)
        cop = abi.CryptOp(
            ses=ses,
            op=op,
            flags=flags,
            len=len(data) if length is None else length,
            src=ptrs.get("src", self.buf(data) if data else None),
            dst=ptrs.get("dst", dst),
            mac=ptrs.get("mac", mac),
            iv=ptrs.get("ivp", self.buf(iv) if iv is not None else None),
        )
        return cop, dst, mac

    def crypt(
        self,
        ses: int,
        op: int,
        data: bytes,
        iv: bytes | None,
        flags: int = 0,
        ivbuf: int | None = None,
    ) -> tuple[bytes, bytes]:
        cop, dst, mac = self.cop(
            ses, op, data, iv, flags, **({"ivp": ivbuf} if ivbuf is not None else {})
        )
        fcntl.ioctl(self.fd, abi.CIOCCRYPT, cop)
        result = ctypes.string_at(dst, len(data)), ctypes.string_at(mac, 32)
        self._keep.clear()
        return result


def _aes_cbc(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def _mapping_address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def guest_bad() -> dict[str, Any]:
    """Every bad argument, then a good operation: errno per case."""
    d = Dev()
    fd = d.fd
    r: dict[str, Any] = {}
    r["gsession_bad_arg"] = _errno(fd, abi.CIOCGSESSION, BAD_PTR)
    r["gsession_bad_key"] = _errno(fd, abi.CIOCGSESSION, d.sop(keyp=BAD_PTR))
    r["gsession_keylen_65"] = _errno(fd, abi.CIOCGSESSION, d.sop(key=bytes(65)))
    r["gsession_keylen_huge"] = _errno(fd, abi.CIOCGSESSION, d.sop(keylen=0xFFFFFFFF))
    r["gsession_keylen_15"] = _errno(fd, abi.CIOCGSESSION, d.sop(key=bytes(15)))
    r["gsession_cipher_unknown"] = _errno(fd, abi.CIOCGSESSION, d.sop(cipher=999))
    r["gsession_nothing"] = _errno(fd, abi.CIOCGSESSION, d.sop(cipher=0, key=b""))
    r["gsession_mackeylen_513"] = _errno(
        fd,
        abi.CIOCGSESSION,
        d.sop(cipher=0, key=b"", mac=abi.CRYPTO_SHA2_256_HMAC, mackey=bytes(513)),
    )
    r["gsession_mac_unknown"] = _errno(
        fd, abi.CIOCGSESSION, d.sop(cipher=0, key=b"", mac=777, mackey=b"k")
    )
    key, iv = os.urandom(32), os.urandom(16)
    ses = d.session(key=key)
    data = os.urandom(64)
    r["crypt_bad_arg"] = _errno(fd, abi.CIOCCRYPT, BAD_PTR)
    r["crypt_huge_len"] = _errno(
        fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, length=MAX_DATA_LEN + 16)[0]
    )
    r["crypt_len_max_u32"] = _errno(
        fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, length=0xFFFFFFF0)[0]
    )
    r["crypt_len_17"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, data[:17], iv)[0])
    r["crypt_op_2"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 2, data, iv)[0])
    r["crypt_unknown_session"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses + 12345, 0, data, iv)[0])
    r["crypt_unsupported_flag"] = _errno(
        fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, flags=COP_FLAG_AEAD_TLS_TYPE)[0]
    )
    r["crypt_bad_src"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, src=BAD_PTR)[0])
    r["crypt_bad_dst"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, dst=BAD_PTR)[0])
    r["crypt_bad_iv"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv, ivp=BAD_PTR)[0])
    # Large requests pin the caller's pages instead of copying: the same answers.
    big = os.urandom(65536)
    r["crypt_zc_bad_src"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, big, iv, src=BAD_PTR)[0])
    r["crypt_zc_bad_dst"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, big, iv, dst=BAD_PTR)[0])
    ro = mmap.mmap(-1, len(big))
    ro_addr = _mapping_address(ro)
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(ro_addr), len(big), mmap.PROT_READ) == 0
    r["crypt_zc_readonly_dst"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, big, iv, dst=ro_addr)[0])
    # A destination with an inaccessible page in the middle.
    rw = mmap.mmap(-1, len(big))
    rw_addr = _mapping_address(rw)
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(rw_addr + 8192), 4096, 0) == 0  # PROT_NONE
    r["crypt_zc_hole_in_dst"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, big, iv, dst=rw_addr)[0])
    r["fsession_bad_arg"] = _errno(fd, abi.CIOCFSESSION, BAD_PTR)
    r["fsession_unknown"] = _errno(fd, abi.CIOCFSESSION, ctypes.c_uint32(ses + 999))
    r["sessinfo_bad_arg"] = _errno(fd, abi.CIOCGSESSINFO, BAD_PTR)
    r["sessinfo_unknown"] = _errno(fd, abi.CIOCGSESSINFO, abi.SessionInfoOp(ses=ses + 999))
    r["unknown_ioctl"] = _errno(fd, CIOC_UNKNOWN, bytes(4))
    r["read"] = 0
    try:
        os.read(fd, 16)
    except OSError as exc:
        r["read"] = exc.errno
    # Still serving, correctly.
    out, _ = d.crypt(ses, abi.COP_ENCRYPT, data, iv)
    r["good_after_bad"] = out == _aes_cbc(key, iv, data, True)
    info = abi.SessionInfoOp(ses=ses)
    fcntl.ioctl(fd, abi.CIOCGSESSINFO, info)
    r["info_cipher"] = info.cipher_info.cra_name.decode()
    r["fsession_ok"] = _errno(fd, abi.CIOCFSESSION, ctypes.c_uint32(ses))
    r["fsession_twice"] = _errno(fd, abi.CIOCFSESSION, ctypes.c_uint32(ses))
    r["crypt_after_free"] = _errno(fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv)[0])
    d.close()
    return r


def guest_features() -> dict[str, Any]:
    """HMAC, chained IV, WRITE_IV chaining, CRIOGET, sessions per file."""
    import hashlib
    import hmac

    d = Dev()
    r: dict[str, Any] = {}
    key, mackey, iv = os.urandom(16), os.urandom(40), os.urandom(16)
    data = os.urandom(4096)
    ses = d.session(cipher=0, key=b"", mac=abi.CRYPTO_SHA2_256_HMAC, mackey=mackey)
    _, mac = d.crypt(ses, abi.COP_ENCRYPT, data, None)
    r["hmac"] = mac == hmac.new(mackey, data, hashlib.sha256).digest()
    ses = d.session(key=key)
    # No IV: the session's chained IV, all-zero before its first operation.
    out, _ = d.crypt(ses, abi.COP_ENCRYPT, data, None)
    r["fresh_iv_zero"] = out == _aes_cbc(key, bytes(16), data, True)
    more, _ = d.crypt(ses, abi.COP_ENCRYPT, data, None)
    r["null_iv_chains"] = out + more == _aes_cbc(key, bytes(16), data + data, True)
    ivb = ctypes.create_string_buffer(iv, 16)  # outlives both calls: the IV chains
    ivbuf = ctypes.addressof(ivb)
    first, _ = d.crypt(ses, abi.COP_ENCRYPT, data[:1024], None, COP_FLAG_WRITE_IV, ivbuf=ivbuf)
    second, _ = d.crypt(ses, abi.COP_ENCRYPT, data[1024:], None, COP_FLAG_WRITE_IV, ivbuf=ivbuf)
    r["write_iv_chains"] = first + second == _aes_cbc(key, iv, data, True)
    big = os.urandom(MAX_DATA_LEN)
    out, _ = d.crypt(ses, abi.COP_DECRYPT, big, iv)
    r["max_len"] = out == _aes_cbc(key, iv, big, False)
    fdbuf = ctypes.c_uint32(0)
    fcntl.ioctl(d.fd, abi.CRIOGET, fdbuf)
    clone = int(fdbuf.value)
    r["crioget_fd_is_new"] = clone != d.fd
    d2 = Dev.__new__(Dev)
    d2.fd, d2._keep = clone, []
    out, _ = d2.crypt(ses, abi.COP_ENCRYPT, data, iv)  # same file, same sessions
    r["crioget_same_file"] = out == _aes_cbc(key, iv, data, True)
    os.close(clone)
    count, err = 2, 0  # plus the two live ones
    while count < SESSIONS_PER_FD:
        try:
            d.session(key=key)
            count += 1
        except OSError as exc:
            err = exc.errno or -1
            break
    r["sessions"] = [count, err]
    d.close()
    # Sessions die with the file: a new file starts from nothing.
    d = Dev()
    r["fresh_file_session"] = d.session(key=key) >= 0
    d.close()
    return r


def _worker(seed: int, ops: int) -> int:
    rnd = random.Random(seed)
    d = Dev()
    key = rnd.randbytes(rnd.choice((16, 24, 32)))
    ses = d.session(key=key)
    bad = 0
    for _ in range(ops):
        size = 16 * rnd.randint(1, 256)
        data, iv = rnd.randbytes(size), rnd.randbytes(16)
        enc = rnd.random() < 0.5
        out, _ = d.crypt(ses, abi.COP_ENCRYPT if enc else abi.COP_DECRYPT, data, iv)
        if out != _aes_cbc(key, iv, data, enc):
            bad += 1
    d.close()
    return bad


def guest_stress(procs: int, ops: int) -> dict[str, Any]:
    """``procs`` processes, each ``ops`` random AES-CBC operations, all checked."""
    start = time.monotonic()
    pids = {}
    for i in range(procs):
        r_fd, w_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r_fd)
            try:
                bad = _worker(1000 + i, ops)
            except Exception as exc:  # reported, not raised: we are a forked child
                bad = -1
                os.write(2, f"worker {i}: {exc!r}\n".encode())
            os.write(w_fd, str(bad).encode())
            os._exit(0)
        os.close(w_fd)
        pids[pid] = r_fd
    results = []
    for pid, r_fd in pids.items():
        os.waitpid(pid, 0)
        results.append(int(os.read(r_fd, 64) or b"-2"))
        os.close(r_fd)
    return {"bad": results, "seconds": time.monotonic() - start}


def guest_openclose(cycles: int) -> dict[str, Any]:
    """Open/close, with a session left open on every other file."""
    failures = 0
    for i in range(cycles):
        try:
            d = Dev()
            if i % 2:
                d.session(key=bytes(16))
            d.close()
        except OSError:
            failures += 1
    return {"failures": failures}


def guest_kill(rounds: int) -> dict[str, Any]:
    """SIGKILL processes in the middle of large requests; the device must carry on."""
    import signal

    for i in range(rounds):
        pid = os.fork()
        if pid == 0:
            d = Dev()
            ses = d.session(key=bytes(16))
            data = bytes(MAX_DATA_LEN)
            while True:
                d.crypt(ses, abi.COP_ENCRYPT, data, bytes(16))
        time.sleep(0.05 + 0.01 * (i % 7))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(256)
    d = Dev()
    out, _ = d.crypt(d.session(key=key), abi.COP_ENCRYPT, data, iv)
    d.close()
    return {"ok_after": out == _aes_cbc(key, iv, data, True)}


def guest_unbind() -> dict[str, Any]:
    """Remove the device under an open file: ENODEV, a clean close, then rebind."""
    drv = Path("/sys/bus/virtio/drivers/virtio_cryptodev")
    name = next(p.name for p in drv.iterdir() if p.name.startswith("virtio"))
    d = Dev()
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(64)
    ses = d.session(key=key)
    r: dict[str, Any] = {}
    (drv / "unbind").write_text(name)
    r["node_gone"] = not Path(NODE).exists()
    r["crypt_after_remove"] = _errno(d.fd, abi.CIOCCRYPT, d.cop(ses, 0, data, iv)[0])
    d.close()
    (drv / "bind").write_text(name)
    for _ in range(100):
        if Path(NODE).exists():
            break
        time.sleep(0.05)
    d = Dev()
    out, _ = d.crypt(d.session(key=key), abi.COP_ENCRYPT, data, iv)
    r["works_after_rebind"] = out == _aes_cbc(key, iv, data, True)
    d.close()
    return r


GUEST_CHECKS = {
    "bad": lambda a: guest_bad(),
    "features": lambda a: guest_features(),
    "stress": lambda a: guest_stress(int(a[0]), int(a[1])),
    "openclose": lambda a: guest_openclose(int(a[0])),
    "kill": lambda a: guest_kill(int(a[0])),
    "unbind": lambda a: guest_unbind(),
}


# ---- host side ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guest() -> Iterator[Any]:
    # Imported here: this file also runs inside the guest as a script, without tests/.
    from tests.vm.own_guest import own_guest

    # Its own guest: these tests unbind the device and reload the module.
    with own_guest(cpus=2) as g:
        yield g


def run_check(g: Any, name: str, *args: object, timeout: float = 300) -> Any:
    res = g.run([sys.executable, str(HERE), name, *map(str, args)], timeout=timeout)
    assert res.status == 0, f"{name}: status {res.status}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def qemu_fds(g: Any) -> int:
    return len(os.listdir(f"/proc/{g.qemu_pid}/fd"))


def assert_console_clean(g: Any) -> None:
    log = Path(g.console_log).read_text(errors="replace")
    for bad in ("BUG:", "Oops", "WARNING:", "general protection", "Call Trace"):
        assert bad not in log, f"{bad!r} on the guest console:\n{log[-4000:]}"


def test_node_appears_by_itself(guest: Any) -> None:
    res = guest.run("ls -l /dev/cryptodev*; grep virtio-cryptodev /proc/devices", timeout=60)
    assert res.status == 0, res
    assert "/dev/cryptodev0" in res.stdout and " virtio-cryptodev" in res.stdout


def test_bad_ioctls_get_errors_and_the_vm_stays_up(guest: Any) -> None:
    r = run_check(guest, "bad")
    E = errno
    expected = {
        "gsession_bad_arg": E.EFAULT,
        "gsession_bad_key": E.EFAULT,
        "gsession_keylen_65": E.EINVAL,
        "gsession_keylen_huge": E.EINVAL,
        "gsession_keylen_15": E.EINVAL,
        "gsession_cipher_unknown": E.EINVAL,
        "gsession_nothing": E.EINVAL,
        "gsession_mackeylen_513": E.EINVAL,
        "gsession_mac_unknown": E.EINVAL,
        "crypt_bad_arg": E.EFAULT,
        "crypt_huge_len": E.EINVAL,
        "crypt_len_max_u32": E.EINVAL,
        "crypt_len_17": E.EINVAL,
        "crypt_op_2": E.EINVAL,
        "crypt_unknown_session": E.EINVAL,
        "crypt_unsupported_flag": E.EINVAL,
        "crypt_bad_src": E.EFAULT,
        "crypt_bad_dst": E.EFAULT,
        "crypt_bad_iv": E.EFAULT,
        "crypt_zc_bad_src": E.EFAULT,
        "crypt_zc_bad_dst": E.EFAULT,
        "crypt_zc_readonly_dst": E.EFAULT,
        "crypt_zc_hole_in_dst": E.EFAULT,
        "fsession_bad_arg": E.EFAULT,
        "fsession_unknown": E.EINVAL,
        "sessinfo_bad_arg": E.EFAULT,
        "sessinfo_unknown": E.EINVAL,
        "unknown_ioctl": E.ENOTTY,
        "read": E.EINVAL,
        "good_after_bad": True,
        "fsession_ok": 0,
        "fsession_twice": E.EINVAL,
        "crypt_after_free": E.EINVAL,
    }
    got = {k: r[k] for k in expected}
    assert got == expected
    assert r["info_cipher"]  # the host's implementation name, e.g. cbc(aes)
    guest.ping()
    assert_console_clean(guest)


def test_features(guest: Any) -> None:
    r = run_check(guest, "features")
    assert r["hmac"] and r["fresh_iv_zero"] and r["null_iv_chains"]
    assert r["write_iv_chains"] and r["max_len"]
    assert r["crioget_fd_is_new"] and r["crioget_same_file"]
    assert r["sessions"] == [SESSIONS_PER_FD, 0]
    assert r["fresh_file_session"]


def test_8_processes_x_500_operations(guest: Any) -> None:
    r = run_check(guest, "stress", 8, 500, timeout=900)
    assert r["bad"] == [0] * 8, r


def test_2000_open_close_without_fd_growth(guest: Any) -> None:
    run_check(guest, "openclose", 50)  # warm up whatever QEMU opens lazily
    before = qemu_fds(guest)
    # More cycles than the device has handles (1024): a leaked handle would fail them.
    r = run_check(guest, "openclose", 2000, timeout=900)
    assert r["failures"] == 0
    assert qemu_fds(guest) <= before


def test_killed_processes_mid_request(guest: Any) -> None:
    before = qemu_fds(guest)
    r = run_check(guest, "kill", 20)
    assert r["ok_after"]
    assert qemu_fds(guest) <= before
    r = run_check(guest, "openclose", 1100)  # no handle leaked by the killed ones
    assert r["failures"] == 0
    assert_console_clean(guest)


def test_device_removal_under_an_open_file(guest: Any) -> None:
    r = run_check(guest, "unbind")
    assert r == {
        "node_gone": True,
        "crypt_after_remove": errno.ENODEV,
        "works_after_rebind": True,
    }
    assert_console_clean(guest)


def test_32bit_process_through_compat_ioctl(guest: Any) -> None:
    """session_op/crypt_op with 32-bit pointers: other sizes, so other ioctl numbers."""
    binary = Path(guest.shared_dir) / "compat32"
    build = subprocess.run(
        ["make", "-s", "-C", str(HERE.parents[2] / "kernel" / "tests"), f"BIN={binary}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, f"cannot build the 32-bit client: {build.stderr.strip()}"
    res = guest.run([str(binary)], timeout=60)
    # AES-128-CBC, zero key, zero IV, one zero block (FIPS-197 known answer).
    assert res.stdout.split() == [
        "66e94bd4ef8a2c3b884cfa59ca342b2e",
        "efault",
        "einval",
        "async",
    ], res
    assert res.status == 0, res


# ---- the cryptodev-linux client (kernel/tests/vectors.c) --------------------------


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def _cipher(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    mode = name.rsplit("-", 1)[1]
    algo = TripleDES(key) if name.startswith("des3") else algorithms.AES(key)
    m = {"cbc": modes.CBC, "ctr": modes.CTR, "xts": modes.XTS}.get(mode)
    enc = Cipher(algo, m(iv) if m else modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def expected_vector_lines() -> list[str]:
    """What kernel/tests/vectors.c must print, computed here with pyca/cryptography."""
    import hashlib
    import hmac

    big = 65536
    ciphers = [
        ("aes-128-cbc", 16, 16, 64), ("aes-192-cbc", 24, 16, 64), ("aes-256-cbc", 32, 16, big),
        ("aes-128-ecb", 16, 0, 64), ("aes-256-ecb", 32, 0, big), ("aes-128-ctr", 16, 16, 61),
        ("aes-256-ctr", 32, 16, big), ("aes-128-xts", 32, 16, 64), ("aes-256-xts", 64, 16, big),
        ("des3-cbc", 24, 8, 64),
    ]  # fmt: skip
    lines = []
    for name, keylen, ivlen, n in ciphers:
        key, iv, src = _pattern(keylen, 1), _pattern(16, 2)[:ivlen], _pattern(n, 3)
        ct = _cipher(name, key, iv, src)
        lines += [f"{name}-enc {ct.hex()}", f"{name}-roundtrip 1"]
        if not ivlen or "xts" in name:
            continue
        half = n // 2 // 16 * 16
        first = _cipher(name, key, iv, src[:half])
        if "ctr" in name:
            nxt = (int.from_bytes(iv, "big") + half // 16).to_bytes(16, "big")
        else:
            nxt = first[-ivlen:]
        lines += [f"{name}-write-iv {nxt.hex()}", f"{name}-chained {ct.hex()}"]
    key, src = _pattern(100, 4), _pattern(1000, 5)
    for keyed in (False, True):
        for hname in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512"):

            def dig(data: bytes, keyed: bool = keyed, hname: str = hname) -> str:
                if keyed:
                    return hmac.new(key, data, hname).hexdigest()
                return hashlib.new(hname, data).hexdigest()

            name = f"hmac-{hname}" if keyed else hname
            lines += [
                f"{name}-oneshot {dig(src)}",
                f"{name}-multipart {dig(src)}",
                f"{name}-copy-a {dig(src)}",
                f"{name}-copy-b {dig(src[:510])}",
            ]
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv, aad, src = _pattern(32, 8), _pattern(12, 9), _pattern(40, 10), _pattern(300, 11)
    sealed = AESGCM(key).encrypt(iv, src, aad)
    short = AESGCM(key).encrypt(iv, src[:64], None)
    lines += [
        f"gcm-enc {sealed.hex()}", "gcm-enc-len 316 300", "gcm-dec 1 300",
        "gcm-bad-tag Bad message", f"gcm-tag8 {short[:72].hex()}",
        "gcm-tls Operation not supported",
    ]  # fmt: skip
    key, src = _pattern(32, 6), _pattern(256, 7)
    ct = _cipher("aes-cbc", key[:16], key[:16], src)
    tag = hmac.new(key, src, "sha1").hexdigest()
    lines += [f"authenc-enc {ct.hex()}", f"authenc-enc-mac {tag}", f"authenc-dec-mac {tag}"]
    lines += ["info cbc(aes) hmac(sha1)", f"crioget-enc {ct[:16].hex()}", "asymfeat 0"]
    lines += ["camellia Operation not supported", "unknown Invalid argument"]
    return lines


def test_cryptodev_linux_client_vectors(guest: Any) -> None:
    """A static C client using only cryptodev-linux's ABI: the host's answers, line by line."""
    binary = Path(guest.shared_dir) / "vectors"
    build = subprocess.run(
        ["cc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
         str(HERE.parents[2] / "kernel" / "tests" / "vectors.c")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    res = guest.run([str(binary)], timeout=120)
    assert res.status == 0, res
    got = res.stdout.strip().splitlines()
    want = expected_vector_lines()
    diff = [f"got  {g[:120]}\nwant {w[:120]}" for g, w in zip(got, want, strict=False) if g != w]
    assert not diff and len(got) == len(want), "\n".join(diff[:10]) or (len(got), len(want))
    assert_console_clean(guest)


def test_unload_reload_and_fixed_major(guest: Any) -> None:
    ko = guest.module
    script = (
        "set -e; exec 3</dev/cryptodev0; "
        "if rmmod virtio_cryptodev 2>/dev/null; then echo unloaded-while-open; fi; "
        "exec 3<&-; rmmod virtio_cryptodev; "
        "test ! -e /dev/cryptodev0; "
        f"insmod {ko} major=60; grep '^ 60 virtio-cryptodev' /proc/devices; "
        "ls -l /dev/cryptodev0; rmmod virtio_cryptodev; "
        f"insmod {ko}; ls /dev/cryptodev0"
    )
    res = guest.run(script, timeout=120)
    assert res.status == 0, res
    assert "unloaded-while-open" not in res.stdout
    assert "crw" in res.stdout and " 60, " in res.stdout
    run_check(guest, "openclose", 10)
    assert_console_clean(guest)


if __name__ == "__main__":
    print(json.dumps(GUEST_CHECKS[sys.argv[1]](sys.argv[2:])))

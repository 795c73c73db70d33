"""Guest workloads with known request counts, for the observability tests.

Runs *in the guest* (``python observe_workload.py MODE SHARE_DIR``) and is imported on the
host for the expected figures. ``known``: opens, sessions and crypts of known sizes (some
opens refused by the device's handle limit on purpose), results checked against
``cryptography``; it then holds its files and sessions until a line arrives on stdin.
``loop``: checked crypts until a stop file appears.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import hmac
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from cdev import cryptodev_abi as abi

NODE = "/dev/cryptodev0"
HMAC_SHA256 = 18
FAILED_OPENS = 2  # opens past the device's handle limit, refused on purpose
# (name, cipher key length (0: none), mac key length (0: none)) on (file index)
SESSIONS = (("A", 16, 0, 0), ("B", 0, 32, 0), ("C", 32, 20, 1))
MAIN_OPENS = 3
# (session, op, size)
CRYPTS = (
    ("A", abi.COP_ENCRYPT, 16),
    ("A", abi.COP_ENCRYPT, 1024),
    ("A", abi.COP_ENCRYPT, 4096),
    ("A", abi.COP_ENCRYPT, 65536),
    ("A", abi.COP_DECRYPT, 64),
    ("A", abi.COP_DECRYPT, 8192),
    ("B", abi.COP_ENCRYPT, 1),
    ("B", abi.COP_ENCRYPT, 100),
    ("B", abi.COP_ENCRYPT, 5000),
    ("C", abi.COP_ENCRYPT, 32),
    ("C", abi.COP_ENCRYPT, 20000),
    ("C", abi.COP_DECRYPT, 48),
)
DESTROYED = ("B",)  # destroyed explicitly at the end; the others go with their files


def expected(fillers: int) -> dict[str, dict[str, int]]:
    """Per call: count, errors, bytes, as the device must see the ``known`` workload."""

    def crypts(op: int) -> dict[str, int]:
        sizes = [size for _, o, size in CRYPTS if o == op]
        return {"count": len(sizes), "errors": 0, "bytes": sum(sizes)}

    return {
        "OPEN": {"count": MAIN_OPENS + fillers + FAILED_OPENS, "errors": FAILED_OPENS, "bytes": 0},
        "CLOSE": {"count": MAIN_OPENS + fillers, "errors": 0, "bytes": 0},
        "SESSION_CREATE": {"count": len(SESSIONS), "errors": 0, "bytes": 0},
        "SESSION_DESTROY": {"count": len(DESTROYED), "errors": 0, "bytes": 0},
        "CRYPT/encrypt": crypts(abi.COP_ENCRYPT),
        "CRYPT/decrypt": crypts(abi.COP_DECRYPT),
    }


class Session:
    def __init__(self, fd: int, keylen: int, mackeylen: int) -> None:
        self.fd = fd
        self.key = os.urandom(keylen)
        self.mackey = os.urandom(mackeylen)
        kb = ctypes.create_string_buffer(self.key, max(keylen, 1))
        mb = ctypes.create_string_buffer(self.mackey, max(mackeylen, 1))
        sop = abi.SessionOp(
            cipher=abi.CRYPTO_AES_CBC if keylen else 0,
            mac=HMAC_SHA256 if mackeylen else 0,
            keylen=keylen,
            key=ctypes.addressof(kb),
            mackeylen=mackeylen,
            mackey=ctypes.addressof(mb),
        )
        fcntl.ioctl(fd, abi.CIOCGSESSION, sop)
        self.id = int(sop.ses)

    def crypt(self, op: int, data: bytes) -> bool:
        """One CIOCCRYPT; True when the device's answer is right."""
        iv = os.urandom(16)
        src = ctypes.create_string_buffer(data, max(len(data), 1))
        dst = ctypes.create_string_buffer(max(len(data), 1))
        mac = ctypes.create_string_buffer(32)
        ivb = ctypes.create_string_buffer(iv, 16)
        cop = abi.CryptOp(
            ses=self.id,
            op=op,
            len=len(data),
            src=ctypes.addressof(src),
            dst=ctypes.addressof(dst),
            mac=ctypes.addressof(mac),
            iv=ctypes.addressof(ivb) if self.key else None,
        )
        fcntl.ioctl(self.fd, abi.CIOCCRYPT, cop)
        ok = True
        plain = data
        if self.key:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            c = Cipher(algorithms.AES(self.key), modes.CBC(iv))
            ctx = c.encryptor() if op == abi.COP_ENCRYPT else c.decryptor()
            want = ctx.update(data) + ctx.finalize()
            ok = dst.raw[: len(data)] == want
            if op == abi.COP_DECRYPT:
                plain = want
        if self.mackey:
            ok = ok and mac.raw == hmac.new(self.mackey, plain, hashlib.sha256).digest()
        return ok

    def destroy(self) -> None:
        fcntl.ioctl(self.fd, abi.CIOCFSESSION, ctypes.c_uint32(self.id))


def _open() -> int:
    return os.open(NODE, os.O_RDWR)


def known(share: Path) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    # Fill the device's handle table, and go past it on purpose: LIMIT from the device.
    fillers: list[int] = []
    failed = 0
    while failed < FAILED_OPENS:
        try:
            fillers.append(_open())
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            failed += 1
    for fd in fillers:
        os.close(fd)
    fds = [_open() for _ in range(MAIN_OPENS)]
    sessions = {name: Session(fds[f], k, m) for name, k, m, f in SESSIONS}
    bad = sum(not sessions[s].crypt(op, os.urandom(n)) for s, op, n in CRYPTS)
    state = {
        "fillers": len(fillers),
        "bad": bad,
        "pid": os.getpid(),
        "sessions": {name: s.id for name, s in sessions.items()},
        "fds": fds,
    }
    # Whole or not at all: the host polls for this file over the share and reads it as soon
    # as it exists.
    tmp = share / "holding.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, share / "holding.json")
    sys.stdin.readline()  # the host looks at the open sessions meanwhile
    for name in DESTROYED:
        sessions[name].destroy()
    for fd in fds:
        os.close(fd)
    return state


def loop(share: Path) -> dict[str, Any]:
    fd = _open()
    ses = Session(fd, 32, 0)
    mac = Session(fd, 0, 32)
    ok = bad = 0
    stop = share / "stop"
    (share / "looping").write_text("")
    while not stop.exists():
        for s in (ses, mac):
            size = 16 * (1 + int.from_bytes(os.urandom(2), "big") % 512)
            op = abi.COP_ENCRYPT if os.urandom(1)[0] & 1 else abi.COP_DECRYPT
            if s.crypt(op, os.urandom(size)):
                ok += 1
            else:
                bad += 1
        time.sleep(0.001)
    os.close(fd)
    return {"ok": ok, "bad": bad}


if __name__ == "__main__":
    mode, share = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"known": known, "loop": loop}[mode](share)))

"""A host program that plays the guest of a virtio-cryptodev device through QEMU's qtest.

QEMU runs with ``-machine pc,accel=qtest -qtest unix:SOCK``: no CPU runs, and this module
does what a guest driver would do, over qtest's text protocol: find the device in PCI
configuration space, program its BAR, negotiate VIRTIO_F_VERSION_1, lay out a split ring
in guest RAM, post descriptor chains, kick the notify register and poll the used ring.
The wire structs come from ``kernel/virtio_cryptodev.h`` (parsed, not retyped).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "kernel" / "virtio_cryptodev.h"


def protocol_constants() -> dict[str, int]:
    """Every numeric ``#define`` of the shared header (VCD_*, VIRTIO_*)."""
    consts: dict[str, int] = {}
    for m in re.finditer(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER.read_text(), re.M):
        name, expr = m.group(1), m.group(2)
        expr = re.sub(r"\b([A-Z_][A-Z0-9_]*)\b", lambda t: str(consts.get(t.group(1), "x")), expr)
        try:
            consts[name] = int(eval(expr, {"__builtins__": {}}))
        except Exception:
            continue
    return consts


C = protocol_constants()
REQ = struct.Struct("<8I2H3I")  # struct vcd_req, 48 bytes
RESP = struct.Struct("<4I")  # struct vcd_resp, 16 bytes
INFO_LEN = 4 * C["VCD_NAME_LEN"] + 8  # struct vcd_session_info
CONFIG = struct.Struct("<4I4I")  # struct vcd_config: algs[4], 4 limits
assert REQ.size == 48 and RESP.size == 16 and CONFIG.size == 32
# Every device feature this driver knows; init() negotiates what is offered of them.
ALL_FEATURES = sum(
    1 << C[f] for f in ("VCD_F_ALGS", "VCD_F_MULTIPART", "VCD_F_AEAD", "VCD_F_ORDERED")
)

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
STATUS_ACK, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK = 1, 2, 4, 8
STATUS_NEEDS_RESET = 0x40


def req(
    call: int,
    *,
    handle: int = 0,
    cmd: int = 0,
    session: int = 0,
    cipher: int = 0,
    mac: int = 0,
    keylen: int = 0,
    mackeylen: int = 0,
    op: int = 0,
    flags: int = 0,
    length: int = 0,
    ivlen: int = 0,
    session2: int = 0,
) -> bytes:
    return REQ.pack(
        call, handle, cmd, session, cipher, mac, keylen, mackeylen, op, flags, length, ivlen,
        session2,
    )  # fmt: skip


@dataclass
class Buf:
    """One descriptor: readable ``data`` or a writable area of ``size`` bytes."""

    data: bytes = b""
    size: int = 0
    writable: bool = False
    addr: int | None = None  # override (fuzzing); normally allocated


def out(data: bytes) -> Buf:
    return Buf(data=data, size=len(data))


def into(size: int) -> Buf:
    return Buf(size=size, writable=True)


@dataclass
class Done:
    used_len: int
    bufs: list[bytes] = field(default_factory=list)  # writable buffers' contents

    @property
    def resp(self) -> tuple[int, int, int, int]:
        # The response is the last 16 bytes of the writable stream, however it is split.
        status, handle, session, reserved = RESP.unpack(b"".join(self.bufs)[-16:])
        return status, handle, session, reserved

    @property
    def status(self) -> int:
        return self.resp[0]


class QtestError(RuntimeError):
    pass


class Qtest:
    """A QEMU process under the qtest accelerator and its control socket."""

    def __init__(
        self,
        qemu: Path,
        firmware: list[Path],
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="cdev-qtest-")
        self.final_stderr = ""
        sock_path = os.path.join(self.tmp.name, "qtest.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(1)
        argv = [str(qemu), "-machine", "pc,accel=qtest", "-qtest", f"unix:{sock_path}"]
        argv += ["-display", "none", "-nodefaults", "-m", "256", "-qtest-log", "/dev/null"]
        for d in firmware:
            argv += ["-L", str(d)]
        argv += extra or []
        self.stderr_path = os.path.join(self.tmp.name, "stderr")
        self.stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=self.stderr, env={**os.environ, **(env or {})}
        )
        listener.settimeout(30)
        try:
            self.sock, _ = listener.accept()
        except TimeoutError:
            self.close()
            raise QtestError(f"QEMU did not connect: {self.stderr_text()}") from None
        finally:
            listener.close()
        self.sock.settimeout(60)
        self.rfile = self.sock.makefile("rb")

    def stderr_text(self) -> str:
        if self.stderr.closed:
            return self.final_stderr[-4000:]
        self.stderr.flush()
        return Path(self.stderr_path).read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        while True:
            reply = self.rfile.readline()
            if not reply:
                raise QtestError(f"QEMU went away on {line.split()[0]}: {self.stderr_text()}")
            text = reply.decode().strip()
            if text.startswith("IRQ"):
                continue  # interrupts are not intercepted, but be safe
            if not text.startswith("OK"):
                raise QtestError(f"qtest {line[:60]!r}: {text}")
            return text[3:]

    def outl(self, port: int, val: int) -> None:
        self.cmd(f"outl 0x{port:x} 0x{val:x}")

    def inl(self, port: int) -> int:
        return int(self.cmd(f"inl 0x{port:x}"), 16)

    def writew(self, addr: int, val: int) -> None:
        self.cmd(f"writew 0x{addr:x} 0x{val:x}")

    def writeb(self, addr: int, val: int) -> None:
        self.cmd(f"writeb 0x{addr:x} 0x{val:x}")

    def writel(self, addr: int, val: int) -> None:
        self.cmd(f"writel 0x{addr:x} 0x{val:x}")

    def writeq(self, addr: int, val: int) -> None:
        self.cmd(f"writeq 0x{addr:x} 0x{val:x}")

    def readb(self, addr: int) -> int:
        return int(self.cmd(f"readb 0x{addr:x}"), 16)

    def readw(self, addr: int) -> int:
        return int(self.cmd(f"readw 0x{addr:x}"), 16)

    def readl(self, addr: int) -> int:
        return int(self.cmd(f"readl 0x{addr:x}"), 16)

    def write(self, addr: int, data: bytes) -> None:
        if data:
            self.cmd(f"b64write 0x{addr:x} {len(data)} {base64.b64encode(data).decode()}")

    def read(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        return base64.b64decode(self.cmd(f"b64read 0x{addr:x} {size}"))

    def close(self) -> int | None:
        if getattr(self, "sock", None) is not None:
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        rc = self.proc.returncode
        # Whatever QEMU printed at exit (sanitizer leak reports come last).
        self.final_stderr = Path(self.stderr_path).read_text(errors="replace")
        self.tmp.cleanup()
        return rc


# Guest physical layout (256 MiB of RAM).
DESC_ADDR = 0x100000
AVAIL_ADDR = 0x104000
USED_ADDR = 0x108000
DATA_ADDR = 0x200000
DATA_END = 0x8000000
BAR_ADDR = 0xE0000000


class VirtioCryptodev:
    """A minimal modern virtio-pci driver for one virtio-cryptodev queue."""

    def __init__(self, qt: Qtest, queue_size: int | None = None) -> None:
        self.qt = qt
        self.devfn = self._find()
        self._setup_bar()
        self.init(queue_size)

    # -- PCI config space through ports 0xcf8/0xcfc
    def _cfg_addr(self, devfn: int, off: int) -> int:
        return 0x80000000 | (devfn << 8) | (off & 0xFC)

    def cfg_readl(self, off: int, devfn: int | None = None) -> int:
        self.qt.outl(0xCF8, self._cfg_addr(self.devfn if devfn is None else devfn, off))
        return self.qt.inl(0xCFC)

    def cfg_writel(self, off: int, val: int) -> None:
        self.qt.outl(0xCF8, self._cfg_addr(self.devfn, off))
        self.qt.outl(0xCFC, val)

    def _find(self) -> int:
        want = (C["VIRTIO_CRYPTODEV_PCI_DEVICE_ID"] << 16) | 0x1AF4
        for devfn in range(0, 32 * 8, 8):
            if self.cfg_readl(0, devfn) == want:
                return devfn
        raise QtestError("no virtio-cryptodev (1af4:107f) on PCI bus 0")

    def _setup_bar(self) -> None:
        self.caps: dict[int, tuple[int, int, int, int]] = {}
        ptr = self.cfg_readl(0x34) & 0xFF
        while ptr:
            word = self.cfg_readl(ptr)
            vndr, nxt = word & 0xFF, (word >> 8) & 0xFF
            if vndr == 0x09:
                cfg_type = (word >> 24) & 0xFF
                bar = self.cfg_readl(ptr + 4) & 0xFF
                offset = self.cfg_readl(ptr + 8)
                mult = self.cfg_readl(ptr + 16) if cfg_type == 2 else 0
                self.caps.setdefault(cfg_type, (bar, offset, mult, ptr))
            ptr = nxt
        bar = self.caps[1][0]
        self.cfg_writel(0x10 + 4 * bar, BAR_ADDR)
        self.cfg_writel(0x10 + 4 * bar + 4, 0)
        self.cfg_writel(0x04, self.cfg_readl(0x04) | 0x6)  # memory space + bus master
        self.common = BAR_ADDR + self.caps[1][1]
        self.device_cfg = BAR_ADDR + self.caps[4][1] if 4 in self.caps else None
        self.notify_base = BAR_ADDR + self.caps[2][1]
        self.notify_mult = self.caps[2][2]

    def status(self) -> int:
        return self.qt.readb(self.common + 20)

    def init(self, queue_size: int | None = None, features: int = ALL_FEATURES) -> None:
        """Reset and bring the device up: features, one queue, DRIVER_OK.

        ``features`` are the device-specific bits (low word) the driver wants; what the
        device offers of them is negotiated and kept in ``self.features``."""
        qt, c = self.qt, self.common
        qt.writeb(c + 20, 0)
        qt.writeb(c + 20, STATUS_ACK)
        qt.writeb(c + 20, STATUS_ACK | STATUS_DRIVER)
        qt.writel(c + 0, 1)
        self.device_features_hi = qt.readl(c + 4)
        if not self.device_features_hi & 1:
            raise QtestError("device does not offer VIRTIO_F_VERSION_1")
        qt.writel(c + 0, 0)
        self.device_features_lo = qt.readl(c + 4)
        self.features = self.device_features_lo & features
        qt.writel(c + 8, 0)
        qt.writel(c + 12, self.features)
        qt.writel(c + 8, 1)
        qt.writel(c + 12, 1)  # VIRTIO_F_VERSION_1 only
        qt.writeb(c + 20, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK)
        if not self.status() & STATUS_FEATURES_OK:
            raise QtestError("FEATURES_OK refused")
        self.num_queues = qt.readw(c + 18)
        qt.writew(c + 22, 0)
        self.max_qsize = qt.readw(c + 24)
        self.qsize = queue_size or self.max_qsize
        qt.writew(c + 24, self.qsize)
        self.notify_off = qt.readw(c + 30)
        qt.write(DESC_ADDR, bytes(16 * self.qsize))
        qt.write(AVAIL_ADDR, bytes(6 + 2 * self.qsize))
        qt.write(USED_ADDR, bytes(6 + 8 * self.qsize))
        qt.writeq(c + 32, DESC_ADDR)
        qt.writeq(c + 40, AVAIL_ADDR)
        qt.writeq(c + 48, USED_ADDR)
        qt.writew(c + 28, 1)
        qt.writeb(c + 20, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        self.avail_idx = 0
        self.used_idx = 0

    def has(self, name: str) -> bool:
        return bool(self.features & (1 << C[name]))

    def config(self) -> tuple[set[int], int, int, int, int]:
        """struct vcd_config: the algorithm numbers, max data len, handles, sessions,
        hash states."""
        assert self.device_cfg is not None, "no device config capability"
        raw = self.qt.read(self.device_cfg, CONFIG.size)
        *words, max_data, max_handles, max_sessions, max_hash = CONFIG.unpack(raw)
        algs = {n for n in range(128) if words[n // 32] & (1 << (n % 32))}
        return algs, max_data, max_handles, max_sessions, max_hash

    def kick(self) -> None:
        self.qt.writew(self.notify_base + self.notify_off * self.notify_mult, 0)

    def submit(self, chains: list[list[Buf]], timeout: float = 30.0) -> list[Done]:
        """Post every chain, kick once, wait for every answer (in used-ring order)."""
        heads = self.post(chains)
        return self.wait(chains, heads, timeout)

    def post(self, chains: list[list[Buf]]) -> dict[int, int]:
        """Post every chain and kick once; returns {head descriptor: chain index}."""
        ndesc = sum(len(ch) for ch in chains)
        if ndesc > self.qsize:
            raise ValueError(f"{ndesc} descriptors do not fit a queue of {self.qsize}")
        descs = bytearray()
        data_writes: list[tuple[int, bytes]] = []
        heads: dict[int, int] = {}
        ptr = DATA_ADDR
        di = 0
        for ci, chain in enumerate(chains):
            heads[di] = ci
            for bi, b in enumerate(chain):
                size = len(b.data) if not b.writable else b.size
                addr = b.addr if b.addr is not None else ptr
                if b.addr is None:
                    ptr = (ptr + max(size, 1) + 15) & ~15
                    if ptr > DATA_END:
                        raise ValueError("chains do not fit the data area")
                if not b.writable and b.data:
                    data_writes.append((addr, b.data))
                flags = VIRTQ_DESC_F_WRITE if b.writable else 0
                last = bi == len(chain) - 1
                if not last:
                    flags |= VIRTQ_DESC_F_NEXT
                descs += struct.pack("<QIHH", addr, size, flags, 0 if last else di + 1)
                b.addr = addr
                di += 1
        for addr, data in data_writes:
            self.qt.write(addr, data)
        self.qt.write(DESC_ADDR, bytes(descs))
        start = self.avail_idx % self.qsize
        for i, head in enumerate(heads):
            self.qt.write(AVAIL_ADDR + 4 + 2 * ((start + i) % self.qsize), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + len(chains)) & 0xFFFF
        self.qt.writew(AVAIL_ADDR + 2, self.avail_idx)
        self.kick()
        return heads

    def wait(self, chains: list[list[Buf]], heads: dict[int, int], timeout: float) -> list[Done]:
        """Wait until every posted chain is answered; read the answers back."""
        deadline = time.monotonic() + timeout
        want = (self.used_idx + len(chains)) & 0xFFFF
        while self.qt.readw(USED_ADDR + 2) != want:
            if self.status() & STATUS_NEEDS_RESET:
                raise DeviceBroken("device set NEEDS_RESET")
            if time.monotonic() > deadline:
                raise QtestError(
                    f"no answer within {timeout}s: used idx {self.qt.readw(USED_ADDR + 2)}"
                )
            time.sleep(0.0005)
        results: list[Done | None] = [None] * len(chains)
        raw = self.qt.read(USED_ADDR + 4, 8 * self.qsize)
        for i in range(len(chains)):
            slot = (self.used_idx + i) % self.qsize
            head, used_len = struct.unpack_from("<II", raw, 8 * slot)
            ci = heads[head]
            chain = chains[ci]
            bufs = [self.qt.read(b.addr or 0, b.size) for b in chain if b.writable]
            results[ci] = Done(used_len, bufs)
        self.used_idx = want
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def call(self, chain: list[Buf]) -> Done:
        return self.submit([chain])[0]


class DeviceBroken(QtestError):
    """The virtio core flagged the device (malformed ring): it needs a reset."""


# ---------------------------------------------------------------- protocol helpers


def open_chain() -> list[Buf]:
    return [out(req(C["VCD_CALL_OPEN"])), into(16)]


def close_chain(handle: int) -> list[Buf]:
    return [out(req(C["VCD_CALL_CLOSE"], handle=handle)), into(16)]


def create_chain(
    handle: int, cipher: int, key: bytes, mac: int = 0, mackey: bytes = b""
) -> list[Buf]:
    chain = [
        out(
            req(
                C["VCD_CALL_IOCTL"],
                handle=handle,
                cmd=C["VCD_CMD_SESSION_CREATE"],
                cipher=cipher,
                mac=mac,
                keylen=len(key),
                mackeylen=len(mackey),
            )
        )
    ]
    if key:
        chain.append(out(key))
    if mackey:
        chain.append(out(mackey))
    chain.append(into(16))
    return chain


def crypt_chain(
    handle: int,
    session: int,
    op: int,
    iv: bytes,
    src: bytes,
    *,
    cipher: bool = True,
    mac: bool = False,
    flags: int | None = None,
    ivout: int = 0,
    maclen: int | None = None,
) -> list[Buf]:
    """A CRYPT chain. ``mac`` asks for a digest area of ``maclen`` bytes (32 by default,
    HMAC-SHA256) and, unless ``flags`` say otherwise, a one-shot MAC (RESET|FINAL);
    ``ivout`` bytes of IV come back (pass VCD_CF_IV_OUT in ``flags``)."""
    if flags is None:
        flags = C["VCD_CF_HASH_RESET"] | C["VCD_CF_HASH_FINAL"] if mac else 0
    chain = [
        out(
            req(
                C["VCD_CALL_IOCTL"],
                handle=handle,
                cmd=C["VCD_CMD_CRYPT"],
                session=session,
                op=op,
                flags=flags,
                length=len(src),
                ivlen=len(iv),
            )
        )
    ]
    if iv:
        chain.append(out(iv))
    if src:
        chain.append(out(src))
    if cipher and src:
        chain.append(into(len(src)))
    if ivout:
        chain.append(into(ivout))
    if mac:
        chain.append(into(C["VCD_HMAC_SHA256_LEN"] if maclen is None else maclen))
    chain.append(into(16))
    return chain


def hash_copy_chain(handle: int, dst: int, src: int) -> list[Buf]:
    return [
        out(
            req(
                C["VCD_CALL_IOCTL"],
                handle=handle,
                cmd=C["VCD_CMD_HASH_COPY"],
                session=dst,
                session2=src,
            )
        ),
        into(16),
    ]


def authcrypt_chain(
    handle: int,
    session: int,
    op: int,
    iv: bytes,
    aad: bytes,
    src: bytes,
    tag_len: int = 0,
    *,
    dst_len: int | None = None,
) -> list[Buf]:
    """An AUTHCRYPT chain (AES-GCM): dst is src plus the tag to encrypt, src less the
    tag to decrypt, unless ``dst_len`` says otherwise."""
    tag = tag_len or 16
    if dst_len is None:
        dst_len = len(src) + tag if op == C["VCD_OP_ENCRYPT"] else len(src) - tag
    chain = [
        out(
            req(
                C["VCD_CALL_IOCTL"],
                handle=handle,
                cmd=C["VCD_CMD_AUTHCRYPT"],
                session=session,
                op=op,
                length=len(src),
                ivlen=len(iv),
            )
        ),
        out(struct.pack("<4I", len(aad), tag_len, 0, 0)),
    ]
    chain += [out(b) for b in (iv, aad, src) if b]
    if dst_len > 0:
        chain.append(into(dst_len))
    chain.append(into(16))
    return chain


def destroy_chain(handle: int, session: int) -> list[Buf]:
    return [
        out(
            req(
                C["VCD_CALL_IOCTL"],
                handle=handle,
                cmd=C["VCD_CMD_SESSION_DESTROY"],
                session=session,
            )
        ),
        into(16),
    ]


def info_chain(handle: int, session: int) -> list[Buf]:
    return [
        out(
            req(C["VCD_CALL_IOCTL"], handle=handle, cmd=C["VCD_CMD_SESSION_INFO"], session=session)
        ),
        into(INFO_LEN),
        into(16),
    ]

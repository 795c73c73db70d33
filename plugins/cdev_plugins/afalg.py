"""The ``afalg`` provider: the Linux kernel crypto API through ``AF_ALG`` sockets.

Ciphers through ``skcipher`` sockets, AES-GCM through ``aead``, hashes and HMACs through
``hash`` (multi-part with ``MSG_MORE``). What the kernel has is learnt by binding: an
algorithm it cannot instantiate is reported unsupported.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path

from cdev.errors import UnavailableError, UsageError
from cdev.hookspecs import hookimpl
from cdev.provider import (
    AEAD,
    ALGORITHMS,
    GCM_IV,
    GCM_TAG,
    HASH,
    Algorithm,
    AuthenticationError,
    Capabilities,
    Provider,
    ProviderError,
    Session,
    SessionInfo,
    UnsupportedError,
    check_session_args,
    cipher_in_pieces,
    standard_capabilities,
)

# One sendmsg() on an AF_ALG socket is bounded by the socket's send buffer (raised below);
# larger cipher requests are chained, as for the ioctl providers.
MAX_REQUEST = 64 * 1024
AEAD_MAX = 256 * 1024
SNDBUF = 1 << 20  # the kernel caps it at twice wmem_max
CBC_ALG = "cbc(aes)"
HMAC_ALG = "hmac(sha256)"
KERNEL_NAMES = {
    "aes-cbc": "cbc(aes)",
    "aes-ecb": "ecb(aes)",
    "aes-ctr": "ctr(aes)",
    "aes-xts": "xts(aes)",
    "aes-gcm": "gcm(aes)",
    "3des-cbc": "cbc(des3_ede)",
}


def kernel_name(name: str) -> str:
    if name in KERNEL_NAMES:
        return KERNEL_NAMES[name]
    return f"hmac({name[5:]})" if name.startswith("hmac-") else name


def _socket_type(alg: Algorithm) -> str:
    return {"cipher": "skcipher", AEAD: "aead"}.get(alg.kind, "hash")


def _driver(name: str) -> str:
    """The highest-priority driver the kernel has for ``name``, from /proc/crypto."""
    best, best_prio = "", -1
    try:
        text = Path("/proc/crypto").read_text()
    except OSError:
        return ""
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        try:
            prio = int(fields.get("priority", "0"))
        except ValueError:
            continue
        if fields.get("name") == name and prio > best_prio:
            best, best_prio = fields.get("driver", ""), prio
    return best


def _bind(kind: str, alg: str, key: bytes | None) -> socket.socket:
    try:
        tfm = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    except (OSError, AttributeError):
        raise UnavailableError(
            "AF_ALG sockets are not available in this kernel; use --provider software"
        ) from None
    try:
        tfm.bind((kind, alg))
        if key is not None:
            tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, key)
        if kind == "aead":
            tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_AEAD_AUTHSIZE, None, GCM_TAG)
    except OSError as exc:
        tfm.close()
        cls = UnsupportedError if exc.errno == errno.ENOENT else ProviderError
        raise cls(f"AF_ALG {alg}: {exc.strerror}") from None
    return tfm


def _accept(tfm: socket.socket) -> socket.socket:
    op = tfm.accept()[0]
    op.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    return op


class AfalgSession(Session):
    def __init__(
        self,
        cipher: Algorithm | None,
        key: bytes | None,
        mac: Algorithm | None,
        mac_key: bytes | None,
    ) -> None:
        self._calg, self._malg = cipher, mac
        self._socks: list[socket.socket] = []
        self._cipher: socket.socket | None = None
        self._mac: socket.socket | None = None
        self._parts: socket.socket | None = None  # multi-part hashing, apart from mac()
        self._mac_tfm: socket.socket | None = None
        self._feeding = False
        try:
            if cipher is not None:
                tfm = self._keep(_bind(_socket_type(cipher), kernel_name(cipher.name), key))
                self._cipher = self._keep(_accept(tfm))
            if mac is not None:
                self._mac_tfm = self._keep(_bind("hash", kernel_name(mac.name), mac_key))
                self._mac = self._keep(_accept(self._mac_tfm))
        except BaseException:
            self.close()
            raise

    def _keep(self, s: socket.socket) -> socket.socket:
        self._socks.append(s)
        return s

    def _err(self, alg: Algorithm | None, exc: OSError) -> ProviderError:
        name = kernel_name(alg.name) if alg else "?"
        return ProviderError(f"AF_ALG {name}: {exc.strerror}")

    def _run(self, op: int, data: bytes, iv: bytes) -> bytes:
        alg, sock = self._calg, self._cipher
        if alg is None or sock is None or alg.kind == AEAD:
            raise ProviderError("this session has no cipher")

        def run(piece: bytes, piece_iv: bytes) -> bytes:
            if not piece:
                return b""
            try:
                if piece_iv:
                    sock.sendmsg_afalg([piece], op=op, iv=piece_iv)
                else:  # ECB: no IV at all (None is refused)
                    sock.sendmsg_afalg([piece], op=op)
                return sock.recv(len(piece))
            except OSError as exc:
                raise self._err(alg, exc) from None

        return cipher_in_pieces(alg, data, iv, MAX_REQUEST, op == socket.ALG_OP_ENCRYPT, run)

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(socket.ALG_OP_ENCRYPT, data, iv)

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(socket.ALG_OP_DECRYPT, data, iv)

    def _aead(self, op: int, iv: bytes, data: bytes, aad: bytes, out_len: int) -> bytes:
        sock = self._cipher
        if self._calg is None or self._calg.kind != AEAD or sock is None:
            raise UnsupportedError("this session has no AEAD cipher")
        if len(iv) != GCM_IV:
            raise ProviderError(f"GCM IV must be {GCM_IV} bytes, got {len(iv)}")
        if len(data) + len(aad) > AEAD_MAX:
            raise ProviderError(f"AEAD request of {len(data)} bytes exceeds {AEAD_MAX}")
        try:
            # The kernel reads associated data || text and writes back associated data
            # || result (ciphertext || tag, or plaintext).
            sock.sendmsg_afalg([aad, data], op=op, iv=iv, assoclen=len(aad))
            out = sock.recv(len(aad) + out_len)
        except OSError as exc:
            if exc.errno == errno.EBADMSG:
                raise AuthenticationError("AEAD tag mismatch") from None
            raise self._err(self._calg, exc) from None
        if len(out) != len(aad) + out_len:
            raise ProviderError(f"AF_ALG gcm(aes) returned {len(out)} bytes")
        return out[len(aad) :]

    def aead_encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return self._aead(socket.ALG_OP_ENCRYPT, iv, data, aad, len(data) + GCM_TAG)

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        if len(data) < GCM_TAG:
            raise AuthenticationError("AEAD input shorter than its tag")
        return self._aead(socket.ALG_OP_DECRYPT, iv, data, aad, len(data) - GCM_TAG)

    def _mac_only(self) -> None:
        if self._mac is None or self._malg is None:
            raise ProviderError("this session has no MAC")
        if self._cipher is not None:
            # As on /dev/crypto: a cipher+MAC session MACs only its own cipher operations.
            raise ProviderError("mac() needs a MAC-only session")

    def _feed(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        for off in range(0, len(data), MAX_REQUEST):
            sock.send(view[off : off + MAX_REQUEST], socket.MSG_MORE)

    def mac(self, data: bytes) -> bytes:
        self._mac_only()
        assert self._mac is not None and self._malg is not None
        try:
            self._feed(self._mac, data)
            self._mac.send(b"")
            return self._mac.recv(self._malg.digest_size)
        except OSError as exc:
            raise self._err(self._malg, exc) from None

    def update(self, data: bytes) -> None:
        self._mac_only()
        assert self._mac_tfm is not None
        try:
            if self._parts is None:
                self._parts = self._keep(_accept(self._mac_tfm))
            if not self._feeding:
                self._parts.send(b"", socket.MSG_MORE)  # starts a new message
                self._feeding = True
            self._feed(self._parts, data)
        except OSError as exc:
            raise self._err(self._malg, exc) from None

    def final(self) -> bytes:
        self._mac_only()
        if not self._feeding:
            return self.mac(b"")
        assert self._parts is not None and self._malg is not None
        self._feeding = False
        try:
            self._parts.send(b"")
            return self._parts.recv(self._malg.digest_size)
        except OSError as exc:
            raise self._err(self._malg, exc) from None

    def info(self) -> SessionInfo:
        cname = kernel_name(self._calg.name) if self._calg else ""
        mname = kernel_name(self._malg.name) if self._malg else ""
        return SessionInfo(
            cipher_name=cname,
            cipher_driver=_driver(cname) if cname else "",
            mac_name=mname,
            mac_driver=_driver(mname) if mname else "",
        )

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks = []
        self._cipher = self._mac = self._parts = self._mac_tfm = None


class AfalgProvider(Provider):
    name = "afalg"
    description = "the Linux kernel crypto API through AF_ALG sockets"

    def __init__(self) -> None:
        _bind("skcipher", CBC_ALG, bytes(16)).close()  # fails early, with one line, if absent
        self._caps: Capabilities | None = None

    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        names = []
        drivers = {}
        for name, alg in ALGORITHMS.items():
            kname = kernel_name(name)
            try:
                key = None if alg.kind == HASH else bytes(range(1, alg.key_sizes[0] + 1))
                _bind(_socket_type(alg), kname, key).close()
            except ProviderError:
                continue
            names.append(name)
            drivers[name] = _driver(kname) or kname
        self._caps = standard_capabilities(
            f"{_driver(CBC_ALG) or CBC_ALG} / {_driver(HMAC_ALG) or HMAC_ALG} (kernel)",
            MAX_REQUEST,
            names=tuple(names),
            drivers=drivers,
        )
        return self._caps

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        c, m = check_session_args(cipher, key, mac, mac_key)
        return AfalgSession(c, key if c else None, m, mac_key if m else None)


def open_afalg(arg: str | None) -> Provider:
    if arg:
        raise UsageError(f"provider 'afalg' takes no argument, got {arg!r}")
    return AfalgProvider()


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(AfalgProvider.name, AfalgProvider.description, open_afalg)

"""The ``afalg`` provider: the Linux kernel crypto API through ``AF_ALG`` sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from cdev.errors import UnavailableError, UsageError
from cdev.hookspecs import hookimpl
from cdev.provider import (
    AES_CBC,
    HMAC_SHA256,
    HMAC_SHA256_SIZE,
    Capabilities,
    Provider,
    ProviderError,
    Session,
    SessionInfo,
    cbc_in_pieces,
    check_session_args,
    standard_capabilities,
)

# One sendmsg() on an AF_ALG skcipher socket is bounded by the socket's buffer; larger
# requests are chained CBC-style, as for the ioctl providers.
MAX_REQUEST = 64 * 1024
CBC_ALG = "cbc(aes)"
HMAC_ALG = "hmac(sha256)"


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
        if fields.get("name") == name and int(fields.get("priority", "0")) > best_prio:
            best, best_prio = fields.get("driver", ""), int(fields.get("priority", "0"))
    return best


def _bind(kind: str, alg: str, key: bytes) -> socket.socket:
    try:
        tfm = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    except (OSError, AttributeError):
        raise UnavailableError(
            "AF_ALG sockets are not available in this kernel; use --provider software"
        ) from None
    try:
        tfm.bind((kind, alg))
        tfm.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, key)
    except OSError as exc:
        tfm.close()
        raise ProviderError(f"AF_ALG {alg}: {exc.strerror}") from None
    return tfm


class AfalgSession(Session):
    def __init__(self, key: bytes | None, mac_key: bytes | None) -> None:
        self._cipher: tuple[socket.socket, socket.socket] | None = None
        self._mac: tuple[socket.socket, socket.socket] | None = None
        try:
            if key is not None:
                tfm = _bind("skcipher", CBC_ALG, key)
                self._cipher = (tfm, tfm.accept()[0])
            if mac_key is not None:
                tfm = _bind("hash", HMAC_ALG, mac_key)
                self._mac = (tfm, tfm.accept()[0])
        except BaseException:
            self.close()
            raise

    def _cbc(self, op: int, data: bytes, iv: bytes) -> bytes:
        if self._cipher is None:
            raise ProviderError("this session has no cipher")
        sock = self._cipher[1]

        def run(piece: bytes, piece_iv: bytes) -> bytes:
            if not piece:
                return b""
            try:
                sock.sendmsg_afalg([piece], op=op, iv=piece_iv)
                return sock.recv(len(piece))
            except OSError as exc:
                raise ProviderError(f"AF_ALG {CBC_ALG}: {exc.strerror}") from None

        return cbc_in_pieces(data, iv, MAX_REQUEST, op == socket.ALG_OP_ENCRYPT, run)

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._cbc(socket.ALG_OP_ENCRYPT, data, iv)

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._cbc(socket.ALG_OP_DECRYPT, data, iv)

    def mac(self, data: bytes) -> bytes:
        if self._mac is None:
            raise ProviderError("this session has no MAC")
        sock = self._mac[1]
        try:
            view = memoryview(data)
            for off in range(0, len(data), MAX_REQUEST):
                sock.send(view[off : off + MAX_REQUEST], socket.MSG_MORE)
            sock.send(b"")
            return sock.recv(HMAC_SHA256_SIZE)
        except OSError as exc:
            raise ProviderError(f"AF_ALG {HMAC_ALG}: {exc.strerror}") from None

    def info(self) -> SessionInfo:
        return SessionInfo(
            cipher_name=CBC_ALG if self._cipher else "",
            cipher_driver=_driver(CBC_ALG) if self._cipher else "",
            mac_name=HMAC_ALG if self._mac else "",
            mac_driver=_driver(HMAC_ALG) if self._mac else "",
        )

    def close(self) -> None:
        for pair in (self._cipher, self._mac):
            if pair is not None:
                for s in pair:
                    s.close()
        self._cipher = self._mac = None


class AfalgProvider(Provider):
    name = "afalg"
    description = "the Linux kernel crypto API through AF_ALG sockets"

    def __init__(self) -> None:
        _bind("skcipher", CBC_ALG, bytes(16)).close()  # fails early, with one line, if absent

    def capabilities(self) -> Capabilities:
        return standard_capabilities(
            f"{_driver(CBC_ALG) or CBC_ALG} / {_driver(HMAC_ALG) or HMAC_ALG} (kernel)",
            MAX_REQUEST,
            names=(AES_CBC, HMAC_SHA256),
            multipart=False,
        )

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        check_session_args(cipher, key, mac, mac_key)
        return AfalgSession(key if cipher else None, mac_key if mac else None)


def open_afalg(arg: str | None) -> Provider:
    if arg:
        raise UsageError(f"provider 'afalg' takes no argument, got {arg!r}")
    return AfalgProvider()


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(AfalgProvider.name, AfalgProvider.description, open_afalg)

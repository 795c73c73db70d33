"""The ``software`` provider: pyca/cryptography (OpenSSL) in this process. The default."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC

from cdev.errors import UsageError
from cdev.hookspecs import hookimpl
from cdev.provider import (
    Capabilities,
    Provider,
    ProviderError,
    Session,
    SessionInfo,
    check_cipher_request,
    check_session_args,
    standard_capabilities,
)

MAX_REQUEST = 1 << 30  # in-process: bounded only by memory; keep requests sane


class SoftwareSession(Session):
    def __init__(
        self, cipher: str | None, key: bytes | None, mac: str | None, mac_key: bytes | None
    ) -> None:
        self._key = bytearray(key) if key else None
        self._mac_key = bytearray(mac_key) if mac_key else None
        self._cipher = cipher
        self._mac = mac
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderError("session is closed")

    def _aes(self, iv: bytes) -> Cipher[modes.CBC]:
        if self._key is None:
            raise ProviderError("this session has no cipher")
        return Cipher(algorithms.AES(bytes(self._key)), modes.CBC(iv))

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        self._check_open()
        check_cipher_request(data, iv, MAX_REQUEST)
        enc = self._aes(iv).encryptor()
        return enc.update(data) + enc.finalize()

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        self._check_open()
        check_cipher_request(data, iv, MAX_REQUEST)
        dec = self._aes(iv).decryptor()
        return dec.update(data) + dec.finalize()

    def mac(self, data: bytes) -> bytes:
        self._check_open()
        if self._mac_key is None:
            raise ProviderError("this session has no MAC")
        if self._key is not None:
            # As on /dev/crypto: a cipher+MAC session MACs only its own cipher operations.
            raise ProviderError("mac() needs a MAC-only session")
        h = HMAC(bytes(self._mac_key), hashes.SHA256())
        h.update(data)
        return h.finalize()

    def info(self) -> SessionInfo:
        return SessionInfo(
            cipher_name="cbc(aes)" if self._cipher else "",
            cipher_driver="openssl" if self._cipher else "",
            mac_name="hmac(sha256)" if self._mac else "",
            mac_driver="openssl" if self._mac else "",
        )

    def close(self) -> None:
        # Best effort: Python may hold other copies, but ours do not outlive the session.
        for buf in (self._key, self._mac_key):
            if buf is not None:
                buf[:] = bytes(len(buf))
        self._closed = True


class SoftwareProvider(Provider):
    name = "software"
    description = "pyca/cryptography (OpenSSL) in this process"

    def capabilities(self) -> Capabilities:
        return standard_capabilities(
            f"{openssl_backend.openssl_version_text()} via pyca/cryptography", MAX_REQUEST
        )

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        check_session_args(cipher, key, mac, mac_key)
        return SoftwareSession(cipher, key, mac, mac_key)


def open_software(arg: str | None) -> Provider:
    if arg:
        raise UsageError(f"provider 'software' takes no argument, got {arg!r}")
    return SoftwareProvider()


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(SoftwareProvider.name, SoftwareProvider.description, open_software)

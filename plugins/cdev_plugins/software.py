"""The ``software`` provider: pyca/cryptography (OpenSSL) in this process. The default.

It offers the whole algorithm table, so it is also the reference the other providers are
compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC

from cdev.errors import UsageError
from cdev.hookspecs import hookimpl
from cdev.provider import (
    AEAD,
    AES_CBC,
    AES_CTR,
    AES_ECB,
    AES_XTS,
    DES3_CBC,
    GCM_IV,
    Algorithm,
    AuthenticationError,
    Capabilities,
    Provider,
    ProviderError,
    Session,
    SessionInfo,
    UnsupportedError,
    check_cipher_request,
    check_session_args,
    standard_capabilities,
)
from cdev.provider import HMAC as HMAC_KIND

MAX_REQUEST = 1 << 30  # in-process: bounded only by memory; keep requests sane

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# The kernel's names, so that session info reads the same whichever provider answers.
_KERNEL_NAMES = {
    AES_CBC: "cbc(aes)",
    AES_ECB: "ecb(aes)",
    AES_CTR: "ctr(aes)",
    AES_XTS: "xts(aes)",
    "aes-gcm": "gcm(aes)",
    DES3_CBC: "cbc(des3_ede)",
}


def kernel_name(name: str) -> str:
    """The Linux crypto API name of a table algorithm (``hmac-sha1`` -> ``hmac(sha1)``)."""
    if name in _KERNEL_NAMES:
        return _KERNEL_NAMES[name]
    if name.startswith("hmac-"):
        return f"hmac({name[5:]})"
    return name


def _mode(name: str, iv: bytes) -> modes.Mode:
    if name in (AES_CBC, DES3_CBC):
        return modes.CBC(iv)
    if name == AES_CTR:
        return modes.CTR(iv)
    if name == AES_XTS:
        return modes.XTS(iv)
    return modes.ECB()


class SoftwareSession(Session):
    def __init__(
        self,
        cipher: Algorithm | None,
        key: bytes | None,
        mac: Algorithm | None,
        mac_key: bytes | None,
    ) -> None:
        self._key = bytearray(key) if key else None
        self._mac_key = bytearray(mac_key) if mac_key else None
        self._cipher = cipher
        self._mac = mac
        self._closed = False
        self._gcm = AESGCM(key) if cipher and cipher.kind == AEAD and key else None
        self._state: hashes.Hash | HMAC | None = None

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderError("session is closed")

    def _engine(self, iv: bytes) -> Cipher[Any]:
        c = self._cipher
        if c is None or self._key is None or c.kind == AEAD:
            raise ProviderError("this session has no cipher")
        alg: CipherAlgorithm = (
            TripleDES(bytes(self._key)) if c.name == DES3_CBC else algorithms.AES(bytes(self._key))
        )
        try:
            return Cipher(alg, _mode(c.name, iv))
        except ValueError as exc:  # e.g. XTS with two equal key halves
            raise ProviderError(f"{c.name}: {exc}") from None

    def _run(self, data: bytes, iv: bytes, encrypt: bool) -> bytes:
        self._check_open()
        if self._cipher is None or self._cipher.kind == AEAD:
            raise ProviderError("this session has no cipher")
        check_cipher_request(data, iv, MAX_REQUEST, self._cipher)
        engine = self._engine(iv)
        ctx = engine.encryptor() if encrypt else engine.decryptor()
        return ctx.update(data) + ctx.finalize()

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(data, iv, True)

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(data, iv, False)

    def _aead(self, iv: bytes) -> AESGCM:
        self._check_open()
        if self._gcm is None:
            raise UnsupportedError("this session has no AEAD cipher")
        if len(iv) != GCM_IV:
            raise ProviderError(f"GCM IV must be {GCM_IV} bytes, got {len(iv)}")
        return self._gcm

    def aead_encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return self._aead(iv).encrypt(iv, data, aad)

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        gcm = self._aead(iv)
        try:
            return gcm.decrypt(iv, data, aad)
        except InvalidTag:
            raise AuthenticationError("AEAD tag mismatch") from None

    def aead_encrypt_into(
        self, iv: bytes, data: bytes | memoryview, out: memoryview, aad: bytes = b""
    ) -> None:
        # In place, and OpenSSL runs without the GIL: the file format's hot path.
        self._aead(iv).encrypt_into(iv, data, aad, out)

    def aead_decrypt_into(
        self, iv: bytes, data: bytes | memoryview, out: memoryview, aad: bytes = b""
    ) -> None:
        gcm = self._aead(iv)
        try:
            gcm.decrypt_into(iv, data, aad, out)
        except InvalidTag:
            raise AuthenticationError("AEAD tag mismatch") from None

    def _new_state(self) -> hashes.Hash | HMAC:
        self._check_open()
        m = self._mac
        if m is None:
            raise ProviderError("this session has no MAC")
        if self._key is not None:
            # As on /dev/crypto: a cipher+MAC session MACs only its own cipher operations.
            raise ProviderError("mac() needs a MAC-only session")
        alg = _HASHES[m.name.removeprefix("hmac-")]()
        if m.kind == HMAC_KIND:
            return HMAC(bytes(self._mac_key or b""), alg)
        return hashes.Hash(alg)

    def mac(self, data: bytes) -> bytes:
        h = self._new_state()
        self._state = None  # a one-shot request resets any multi-part state, as cryptodev
        h.update(data)
        return h.finalize()

    def update(self, data: bytes) -> None:
        if self._state is None:
            self._state = self._new_state()
        self._state.update(data)

    def final(self) -> bytes:
        h = self._state if self._state is not None else self._new_state()
        self._state = None
        return h.finalize()

    def info(self) -> SessionInfo:
        return SessionInfo(
            cipher_name=kernel_name(self._cipher.name) if self._cipher else "",
            cipher_driver="openssl" if self._cipher else "",
            mac_name=kernel_name(self._mac.name) if self._mac else "",
            mac_driver="openssl" if self._mac else "",
        )

    def close(self) -> None:
        # Best effort: Python may hold other copies, but ours do not outlive the session.
        for buf in (self._key, self._mac_key):
            if buf is not None:
                buf[:] = bytes(len(buf))
        self._gcm = None
        self._state = None
        self._closed = True


def _openssl_version() -> str:
    try:  # what the backend's openssl_version_text() returns, without importing the backend
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return str(rust_openssl.openssl_version_text())
    except (ImportError, AttributeError):  # 9 ms more start-up, but public
        from cryptography.hazmat.backends.openssl.backend import backend

        return backend.openssl_version_text()


class SoftwareProvider(Provider):
    name = "software"
    description = "pyca/cryptography (OpenSSL) in this process"

    def capabilities(self) -> Capabilities:
        return standard_capabilities(f"{_openssl_version()} via pyca/cryptography", MAX_REQUEST)

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        c, m = check_session_args(cipher, key, mac, mac_key)
        return SoftwareSession(c, key, m, mac_key)


def open_software(arg: str | None) -> Provider:
    if arg:
        raise UsageError(f"provider 'software' takes no argument, got {arg!r}")
    return SoftwareProvider()


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(SoftwareProvider.name, SoftwareProvider.description, open_software)

"""A provider over the cryptodev ioctl ABI, shared by ``/dev/crypto`` (``cryptodev``) and
our paravirtual ``/dev/cryptodevN`` (``virtio``): the same calls, a different node."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import ClassVar

from cdev import cryptodev_abi as abi
from cdev.errors import UnavailableError
from cdev.provider import (
    AES_BLOCK,
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

_CIPHERS = {AES_CBC: abi.CRYPTO_AES_CBC}
_MACS = {HMAC_SHA256: abi.CRYPTO_SHA2_256_HMAC}


def _os_error(what: str, exc: OSError) -> ProviderError:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return ProviderError(f"{what} failed: {name} ({exc.strerror})")


class IoctlSession(Session):
    def __init__(self, provider: IoctlProvider, ses: int, cipher: bool, mac: bool) -> None:
        self._p = provider
        self._ses = ses
        self._has_cipher = cipher
        self._has_mac = mac
        self._closed = False
        self._dst = ctypes.create_string_buffer(AES_BLOCK)
        self._mac_buf = ctypes.create_string_buffer(HMAC_SHA256_SIZE)
        self._mac_addr = ctypes.addressof(self._mac_buf)
        self._cop = abi.CryptOpBytes(ses=ses, dst=ctypes.addressof(self._dst) if cipher else None)

    def _crypt(self, op: int, data: bytes, iv: bytes | None, want_mac: bool) -> tuple[bytes, bytes]:
        """One CIOCCRYPT. The hot path of every device-backed provider, kept lean: under
        emulation each Python object created here costs microseconds per request."""
        if self._closed:
            raise ProviderError("session is closed")
        n = len(data)
        cop = self._cop
        if self._has_cipher and len(self._dst) < n:
            self._dst = ctypes.create_string_buffer(n)
            cop.dst = ctypes.addressof(self._dst)
        # src and iv by address, no copy (the device only reads them); dst is the
        # session's reusable buffer, so the only pass over the output is string_at below.
        cop.op = op
        cop.len = n
        cop.src = data if type(data) is bytes else bytes(data)
        cop.iv = iv
        cop.mac = self._mac_addr if want_mac else None
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCCRYPT, cop)
        except OSError as exc:
            raise _os_error("CIOCCRYPT", exc) from None
        finally:
            cop.src = cop.iv = None  # do not keep the caller's data alive
        out = ctypes.string_at(cop.dst, n) if self._has_cipher else b""
        return out, (self._mac_buf.raw if want_mac else b"")

    def _cbc(self, op: int, data: bytes, iv: bytes) -> bytes:
        if not self._has_cipher:
            raise ProviderError("this session has no cipher")
        return cbc_in_pieces(
            data, iv, self._p.max_request, op == abi.COP_ENCRYPT,
            lambda piece, piece_iv: self._crypt(op, piece, piece_iv, want_mac=False)[0],
        )  # fmt: skip

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._cbc(abi.COP_ENCRYPT, data, iv)

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._cbc(abi.COP_DECRYPT, data, iv)

    def mac(self, data: bytes) -> bytes:
        if not self._has_mac or self._has_cipher:
            raise ProviderError("mac() needs a MAC-only session")
        if len(data) > self._p.max_request:
            raise ProviderError(
                f"MAC request of {len(data)} bytes exceeds the device maximum "
                f"of {self._p.max_request}"
            )
        _, tag = self._crypt(abi.COP_ENCRYPT, data, None, want_mac=True)
        return tag

    def info(self) -> SessionInfo:
        sio = abi.SessionInfoOp(ses=self._ses)
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCGSESSINFO, sio)
        except OSError as exc:
            raise _os_error("CIOCGSESSINFO", exc) from None
        return SessionInfo(
            cipher_name=sio.cipher_info.cra_name.decode(errors="replace"),
            cipher_driver=sio.cipher_info.cra_driver_name.decode(errors="replace"),
            mac_name=sio.hash_info.cra_name.decode(errors="replace"),
            mac_driver=sio.hash_info.cra_driver_name.decode(errors="replace"),
            alignmask=sio.alignmask,
            kernel_driver_only=bool(sio.flags & abi.SIOP_FLAG_KERNEL_DRIVER_ONLY),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ctypes.memset(self._dst, 0, len(self._dst))  # it held the last plaintext or ciphertext
        if self._p.fd < 0:
            return  # the device is gone and took its sessions with it
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCFSESSION, ctypes.c_uint32(self._ses))
        except OSError as exc:
            raise _os_error("CIOCFSESSION", exc) from None


class IoctlProvider(Provider):
    """Base for providers that speak the cryptodev ioctl ABI on a character device."""

    max_request: ClassVar[int] = 16 << 20
    unavailable_hint: ClassVar[str] = ""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnavailableError(f"{path} does not exist; {self.unavailable_hint}") from None
        except PermissionError:
            raise UnavailableError(
                f"no permission to open {path}; run as root or ask for access "
                "(cdev nodes create --group GROUP)"
            ) from None
        except OSError as exc:
            raise UnavailableError(f"cannot open {path}: {exc.strerror}") from None

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        check_session_args(cipher, key, mac, mac_key)
        keybuf = ctypes.create_string_buffer(key or b"", len(key or b""))
        mackeybuf = ctypes.create_string_buffer(mac_key or b"", len(mac_key or b""))
        sop = abi.SessionOp(
            cipher=_CIPHERS[cipher] if cipher else 0,
            mac=_MACS[mac] if mac else 0,
            keylen=len(key or b""),
            key=ctypes.addressof(keybuf) if key else None,
            mackeylen=len(mac_key or b""),
            mackey=ctypes.addressof(mackeybuf) if mac_key else None,
        )
        try:
            fcntl.ioctl(self.fd, abi.CIOCGSESSION, sop)
        except OSError as exc:
            raise _os_error("CIOCGSESSION", exc) from None
        finally:
            ctypes.memset(keybuf, 0, len(key or b""))
            ctypes.memset(mackeybuf, 0, len(mac_key or b""))
        return IoctlSession(self, sop.ses, cipher is not None, mac is not None)

    def capabilities(self) -> Capabilities:
        driver = self.path
        try:
            with self.open_session(AES_CBC, bytes(16)) as s:
                info = s.info()
            driver = f"{info.cipher_driver or '?'} via {self.path}"
        except ProviderError:
            pass
        return standard_capabilities(
            driver, self.max_request, names=(AES_CBC, HMAC_SHA256), multipart=False
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

"""A provider over the cryptodev ioctl ABI, shared by ``/dev/crypto`` (``cryptodev``) and
our paravirtual ``/dev/cryptodevN`` (``virtio``): the same calls, a different node.

Every algorithm of the table goes through cryptodev-linux's own requests: CIOCGSESSION
(cipher-only, hash/MAC-only, both), CIOCCRYPT (with ``COP_FLAG_UPDATE``/``FINAL``/``RESET``
for multi-part hashing), CIOCAUTHCRYPT for AES-GCM. What the node supports is learnt by
asking it: an algorithm whose session it refuses (EOPNOTSUPP, or cryptodev-linux's EINVAL
for an algorithm its kernel lacks) is reported unsupported, never tried and got wrong.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import ClassVar

from cdev import cryptodev_abi as abi
from cdev.errors import UnavailableError
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
    next_iv,
    standard_capabilities,
)

# Answers that mean "this node does not do that", as opposed to a bad request.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOENT, errno.ENOTTY, errno.ENOSYS}
AUTH_MAX = 4096  # cryptodev-linux copies auth data to one page


def _os_error(what: str, exc: OSError) -> ProviderError:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    cls = UnsupportedError if exc.errno in _UNSUPPORTED else ProviderError
    return cls(f"{what} failed: {name} ({exc.strerror})")


def _probe_key(alg: Algorithm) -> bytes | None:
    """A valid key for asking whether a node has ``alg`` (XTS halves must differ)."""
    if alg.kind == HASH:
        return None
    return bytes(range(1, alg.key_sizes[0] + 1)) if alg.kind != "hmac" else b"probe"


class IoctlSession(Session):
    def __init__(
        self, provider: IoctlProvider, ses: int, cipher: Algorithm | None, mac: Algorithm | None
    ) -> None:
        self._p = provider
        self._ses = ses
        self._cipher_alg = cipher
        self._mac_alg = mac
        self._has_cipher = cipher is not None
        self._has_mac = mac is not None
        self._closed = False
        self._fresh = True  # the next multi-part request starts a new message (RESET)
        self._dst = ctypes.create_string_buffer(abi.EALG_MAX_BLOCK_LEN)
        self._mac_buf = ctypes.create_string_buffer(abi.AALG_MAX_RESULT_LEN)
        self._mac_addr = ctypes.addressof(self._mac_buf)
        plain_cipher = self._has_cipher and cipher is not None and cipher.kind != AEAD
        self._cop = abi.CryptOpBytes(
            ses=ses, dst=ctypes.addressof(self._dst) if plain_cipher else None
        )

    def _check(self) -> None:
        if self._closed:
            raise ProviderError("session is closed")

    def _crypt(
        self, op: int, data: bytes, iv: bytes | None, want_mac: bool, flags: int = 0
    ) -> tuple[bytes, bytes]:
        """One CIOCCRYPT. The hot path of every device-backed provider, kept lean: under
        emulation each Python object created here costs microseconds per request."""
        self._check()
        n = len(data)
        cop = self._cop
        if cop.dst is not None and len(self._dst) < n:
            self._dst = ctypes.create_string_buffer(n)
            cop.dst = ctypes.addressof(self._dst)
        # src and iv by address, no copy (the device only reads them); dst is the
        # session's reusable buffer, so the only pass over the output is string_at below.
        cop.op = op
        cop.flags = flags
        cop.len = n
        cop.src = data if type(data) is bytes else bytes(data)
        cop.iv = iv or None
        cop.mac = self._mac_addr if want_mac else None
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCCRYPT, cop)
        except OSError as exc:
            raise _os_error("CIOCCRYPT", exc) from None
        finally:
            cop.src = cop.iv = None  # do not keep the caller's data alive
        out = ctypes.string_at(cop.dst, n) if cop.dst is not None else b""
        size = self._mac_alg.digest_size if self._mac_alg else 0
        return out, (self._mac_buf.raw[:size] if want_mac else b"")

    def _chained(self, op: int, data: bytes, iv: bytes) -> bytes:
        """One piece of a chained request, with ``COP_FLAG_WRITE_IV``: the node writes the
        IV that continues the chain back, and it must be the one the mode defines."""
        alg = self._cipher_alg
        assert alg is not None
        src = ctypes.create_string_buffer(data, len(data))
        dst = ctypes.create_string_buffer(max(len(data), 1))
        ivb = ctypes.create_string_buffer(iv, max(len(iv), 1))
        cop = abi.CryptOp(
            ses=self._ses, op=op, flags=abi.COP_FLAG_WRITE_IV, len=len(data),
            src=ctypes.addressof(src), dst=ctypes.addressof(dst), mac=None,
            iv=ctypes.addressof(ivb) if iv else None,
        )  # fmt: skip
        self._check()
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCCRYPT, cop)
        except OSError as exc:
            raise _os_error("CIOCCRYPT", exc) from None
        out = dst.raw[: len(data)]
        want = next_iv(alg, iv, data, out, op == abi.COP_ENCRYPT)
        if iv and ivb.raw[: len(iv)] != want:
            raise ProviderError(f"{self._p.path} wrote back a wrong chained IV for {alg.name}")
        return out

    def _run(self, op: int, data: bytes, iv: bytes) -> bytes:
        alg = self._cipher_alg
        if alg is None or alg.kind == AEAD:
            raise ProviderError("this session has no cipher")
        if len(data) > self._p.max_request:
            return cipher_in_pieces(
                alg, data, iv, self._p.max_request, op == abi.COP_ENCRYPT,
                lambda piece, piece_iv: self._chained(op, piece, piece_iv),
            )  # fmt: skip
        return cipher_in_pieces(
            alg, data, iv, self._p.max_request, op == abi.COP_ENCRYPT,
            lambda piece, piece_iv: self._crypt(op, piece, piece_iv, want_mac=False)[0],
        )  # fmt: skip

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(abi.COP_ENCRYPT, data, iv)

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._run(abi.COP_DECRYPT, data, iv)

    def _mac_only(self) -> None:
        if not self._has_mac or self._has_cipher:
            raise ProviderError("mac() needs a MAC-only session")

    def mac(self, data: bytes) -> bytes:
        self._mac_only()
        if len(data) <= self._p.max_request:
            self._fresh = True  # flags 0: cryptodev resets, hashes, finishes
            return self._crypt(abi.COP_ENCRYPT, data, None, want_mac=True)[1]
        if not self._p.capabilities().multipart:
            raise ProviderError(
                f"MAC request of {len(data)} bytes exceeds the device maximum "
                f"of {self._p.max_request}"
            )
        self._fresh = True
        self.update(data)
        return self.final()

    def update(self, data: bytes) -> None:
        self._mac_only()
        step = self._p.max_request
        for off in range(0, len(data), step):
            # An UPDATE of 0 bytes would finish the hash (cryptodev-linux): never sent.
            flags = abi.COP_FLAG_UPDATE | (abi.COP_FLAG_RESET if self._fresh else 0)
            self._crypt(abi.COP_ENCRYPT, data[off : off + step], None, False, flags)
            self._fresh = False

    def final(self) -> bytes:
        self._mac_only()
        flags = abi.COP_FLAG_FINAL | (abi.COP_FLAG_RESET if self._fresh else 0)
        self._fresh = True
        return self._crypt(abi.COP_ENCRYPT, b"", None, True, flags)[1]

    def _auth_crypt(self, op: int, iv: bytes, data: bytes, aad: bytes, out_len: int) -> bytes:
        self._check()
        if self._cipher_alg is None or self._cipher_alg.kind != AEAD:
            raise UnsupportedError("this session has no AEAD cipher")
        if len(iv) != GCM_IV:
            raise ProviderError(f"GCM IV must be {GCM_IV} bytes, got {len(iv)}")
        if len(aad) > AUTH_MAX:
            raise ProviderError(f"associated data of {len(aad)} bytes exceeds {AUTH_MAX}")
        if len(data) > self._p.max_request:
            raise ProviderError(
                f"request of {len(data)} bytes exceeds the maximum of {self._p.max_request}"
            )
        src = ctypes.create_string_buffer(data, len(data))
        ivb = ctypes.create_string_buffer(iv, len(iv))
        auth = ctypes.create_string_buffer(aad, len(aad))
        dst = ctypes.create_string_buffer(max(out_len, len(data), 1))
        caop = abi.CryptAuthOp(
            ses=self._ses,
            op=op,
            flags=0,
            len=len(data),
            auth_len=len(aad),
            auth_src=ctypes.addressof(auth) if aad else None,
            src=ctypes.addressof(src),
            dst=ctypes.addressof(dst),
            tag=None,
            tag_len=GCM_TAG,
            iv=ctypes.addressof(ivb),
            iv_len=len(iv),
        )
        try:
            fcntl.ioctl(self._p.fd, abi.CIOCAUTHCRYPT, caop)
        except OSError as exc:
            if exc.errno == errno.EBADMSG:
                raise AuthenticationError("AEAD tag mismatch") from None
            raise _os_error("CIOCAUTHCRYPT", exc) from None
        return dst.raw[:out_len]

    def aead_encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return self._auth_crypt(abi.COP_ENCRYPT, iv, data, aad, len(data) + GCM_TAG)

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        if len(data) < GCM_TAG:
            raise AuthenticationError("AEAD input shorter than its tag")
        return self._auth_crypt(abi.COP_DECRYPT, iv, data, aad, len(data) - GCM_TAG)

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
        self._caps: Capabilities | None = None
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

    def _session(self, c: Algorithm | None, key: bytes, m: Algorithm | None, mkey: bytes) -> int:
        keybuf = ctypes.create_string_buffer(key, len(key))
        mackeybuf = ctypes.create_string_buffer(mkey, len(mkey))
        sop = abi.SessionOp(
            cipher=abi.CIPHER_IDS[c.name] if c else 0,
            mac=abi.MAC_IDS[m.name] if m else 0,
            keylen=len(key),
            key=ctypes.addressof(keybuf) if key else None,
            mackeylen=len(mkey),
            mackey=ctypes.addressof(mackeybuf) if mkey else None,
        )
        try:
            fcntl.ioctl(self.fd, abi.CIOCGSESSION, sop)
        except OSError as exc:
            raise _os_error("CIOCGSESSION", exc) from None
        finally:
            ctypes.memset(keybuf, 0, len(key))
            ctypes.memset(mackeybuf, 0, len(mkey))
        return int(sop.ses)

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        c, m = check_session_args(cipher, key, mac, mac_key)
        ses = self._session(c, key or b"", m, mac_key or b"")
        return IoctlSession(self, ses, c, m)

    def _probe(self, alg: Algorithm) -> tuple[bool, str]:
        """Whether the node opens a session for ``alg``, and the driver it names."""
        key = _probe_key(alg)
        try:
            if alg.kind in ("cipher", AEAD):
                s = self.open_session(cipher=alg.name, key=key)
            else:
                s = self.open_session(mac=alg.name, mac_key=key)
        except UnsupportedError:
            return False, ""
        except ProviderError as exc:
            # cryptodev-linux answers EINVAL for an algorithm its kernel lacks; our keys
            # and lengths are valid, so that is what EINVAL means here.
            if "EINVAL" in str(exc):
                return False, ""
            raise
        with s:
            try:
                i = s.info()
                driver = i.cipher_driver or i.mac_driver
            except ProviderError:
                driver = ""
        return True, driver

    def _probe_multipart(self, alg: Algorithm) -> bool:
        with self.open_session(mac=alg.name, mac_key=_probe_key(alg)) as s:
            try:
                s.update(b"a")
                s.final()
            except ProviderError:
                return False
        return True

    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        names: list[str] = []
        drivers: dict[str, str] = {}
        for name, alg in ALGORITHMS.items():
            ok, driver = self._probe(alg)
            if ok:
                names.append(name)
                if driver:
                    drivers[name] = driver
        macs = [ALGORITHMS[n] for n in names if ALGORITHMS[n].kind in (HASH, "hmac")]
        multipart = bool(macs) and self._probe_multipart(macs[0])
        first = drivers.get("aes-cbc") or next(iter(drivers.values()), "?")
        self._caps = standard_capabilities(
            f"{first} via {self.path}",
            self.max_request,
            names=tuple(names),
            multipart=multipart,
            drivers=drivers,
        )
        return self._caps

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

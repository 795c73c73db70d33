"""The crypto provider interface, shaped like the cryptodev ioctl ABI.

A provider opens sessions (a cipher and key, optionally a MAC algorithm and key), runs
encrypt/decrypt/MAC requests on them and closes them, exactly as a program would through
``CIOCGSESSION`` / ``CIOCCRYPT`` / ``CIOCFSESSION`` on ``/dev/crypto``. Providers are
registered by plugins through :func:`cdev.hookspecs.cdev_register_providers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

from cdev.errors import CdevError, IntegrityError

# Algorithm names, one table for every provider (cryptodev-linux numbers in cryptodev_abi).
AES_CBC = "aes-cbc"
AES_ECB = "aes-ecb"
AES_CTR = "aes-ctr"
AES_XTS = "aes-xts"
AES_GCM = "aes-gcm"
DES3_CBC = "3des-cbc"
MD5 = "md5"
SHA1 = "sha1"
SHA224 = "sha224"
SHA256 = "sha256"
SHA384 = "sha384"
SHA512 = "sha512"
HMAC_MD5 = "hmac-md5"
HMAC_SHA1 = "hmac-sha1"
HMAC_SHA224 = "hmac-sha224"
HMAC_SHA256 = "hmac-sha256"
HMAC_SHA384 = "hmac-sha384"
HMAC_SHA512 = "hmac-sha512"

CIPHER, AEAD, HASH, HMAC = "cipher", "aead", "hash", "hmac"

AES_BLOCK = 16
AES_KEY_SIZES = (16, 24, 32)
HMAC_SHA256_SIZE = 32
HMAC_MAX_KEY = 512  # CRYPTO_HMAC_MAX_KEY_LEN
GCM_IV = 12
GCM_TAG = 16


@dataclass(frozen=True)
class Algorithm:
    name: str  # AES_CBC, HMAC_SHA256, ...
    key_sizes: tuple[int, ...]  # accepted key lengths in bytes (HMAC: the range 1..512)
    block_size: int = 1  # request lengths must be a multiple of this
    digest_size: int = 0
    kind: str = CIPHER
    iv_size: int = 0
    min_len: int = 0  # shortest request (XTS needs a full block)


def _hash(name: str, size: int) -> Algorithm:
    return Algorithm(name, (), digest_size=size, kind=HASH)


def _hmac(name: str, size: int) -> Algorithm:
    return Algorithm(name, (1, HMAC_MAX_KEY), digest_size=size, kind=HMAC)


AES_CBC_ALGORITHM = Algorithm(AES_CBC, AES_KEY_SIZES, block_size=AES_BLOCK, iv_size=AES_BLOCK)
HMAC_SHA256_ALGORITHM = _hmac(HMAC_SHA256, HMAC_SHA256_SIZE)

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        AES_CBC_ALGORITHM,
        Algorithm(AES_ECB, AES_KEY_SIZES, block_size=AES_BLOCK),
        Algorithm(AES_CTR, AES_KEY_SIZES, iv_size=AES_BLOCK),
        # XTS takes two AES keys: 2 x 128 or 2 x 256 bits (IEEE 1619 XTS-AES-128/256).
        Algorithm(AES_XTS, (32, 64), block_size=AES_BLOCK, iv_size=AES_BLOCK, min_len=AES_BLOCK),
        Algorithm(AES_GCM, AES_KEY_SIZES, kind=AEAD, iv_size=GCM_IV, digest_size=GCM_TAG),
        Algorithm(DES3_CBC, (24,), block_size=8, iv_size=8),
        _hash(MD5, 16),
        _hash(SHA1, 20),
        _hash(SHA224, 28),
        _hash(SHA256, 32),
        _hash(SHA384, 48),
        _hash(SHA512, 64),
        _hmac(HMAC_MD5, 16),
        _hmac(HMAC_SHA1, 20),
        _hmac(HMAC_SHA224, 28),
        HMAC_SHA256_ALGORITHM,
        _hmac(HMAC_SHA384, 48),
        _hmac(HMAC_SHA512, 64),
    )
}
CIPHERS = tuple(n for n, a in ALGORITHMS.items() if a.kind in (CIPHER, AEAD))
MACS = tuple(n for n, a in ALGORITHMS.items() if a.kind in (HASH, HMAC))


@dataclass(frozen=True)
class Capabilities:
    driver: str  # what actually does the work, e.g. "OpenSSL 3.x via pyca/cryptography"
    ciphers: tuple[Algorithm, ...]  # ciphers and AEADs this provider supports
    macs: tuple[Algorithm, ...]  # plain hashes and HMACs this provider supports
    max_request: int  # largest single request in bytes
    combined: bool = False  # one session may carry both a cipher and a MAC
    notes: tuple[str, ...] = ()
    multipart: bool = False  # hashes and HMACs can be fed in parts (update/final)
    drivers: dict[str, str] = field(default_factory=dict)  # algorithm -> engine, when known

    def supports(self, name: str) -> bool:
        return any(a.name == name for a in self.ciphers + self.macs)

    @property
    def unsupported(self) -> tuple[str, ...]:
        return tuple(n for n in ALGORITHMS if not self.supports(n))


def standard_capabilities(
    driver: str,
    max_request: int,
    names: tuple[str, ...] | None = None,
    multipart: bool = True,
    drivers: dict[str, str] | None = None,
) -> Capabilities:
    """Capabilities for the algorithms in ``names`` (default: the whole table)."""
    have = set(ALGORITHMS if names is None else names)
    return Capabilities(
        driver=driver,
        ciphers=tuple(ALGORITHMS[n] for n in CIPHERS if n in have),
        macs=tuple(ALGORITHMS[n] for n in MACS if n in have),
        max_request=max_request,
        combined=True,
        multipart=multipart,
        drivers=drivers or {},
    )


@dataclass(frozen=True)
class SessionInfo:
    """What ``CIOCGSESSINFO`` reports, for any provider."""

    cipher_name: str = ""
    cipher_driver: str = ""
    mac_name: str = ""
    mac_driver: str = ""
    alignmask: int = 0
    kernel_driver_only: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class ProviderError(CdevError):
    """A request the provider refused (bad length, unknown session, device error)."""


class UnsupportedError(ProviderError):
    """The provider (or the device behind it) does not do this algorithm or operation."""


class AuthenticationError(ProviderError, IntegrityError):
    """An AEAD tag did not verify: the data, the associated data, the IV or the key is wrong."""


class Session(ABC):
    """One open session. Close it (or use it as a context manager) to wipe its keys.

    A session holds a cipher (or AEAD), a MAC (an HMAC or a plain hash), or both, as a
    ``/dev/crypto`` session does. What it can do follows from what it holds.
    """

    @abstractmethod
    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        """Encrypt ``data`` with the session's cipher (CBC, ECB, CTR, XTS, 3DES-CBC).

        ``data`` is a multiple of the cipher's block size (any length for CTR); ``iv`` is
        the IV (CBC, CTR: the initial counter block, XTS: the tweak; empty for ECB). No padding.
        """

    @abstractmethod
    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        """The inverse of :meth:`encrypt`."""

    @abstractmethod
    def mac(self, data: bytes) -> bytes:
        """The digest of ``data``: the HMAC under the session's key, or the plain hash.

        Only on a MAC-only session: a session with both a cipher and a MAC follows cryptodev,
        which MACs only its own cipher operations, so encrypt-then-MAC users open two.
        """

    def update(self, data: bytes) -> None:
        """Feed ``data`` to a multi-part hash or HMAC (``COP_FLAG_UPDATE``)."""
        raise UnsupportedError("multi-part hashing is not supported by this provider")

    def final(self) -> bytes:
        """Finish a multi-part hash or HMAC (``COP_FLAG_FINAL``) and start a new one."""
        raise UnsupportedError("multi-part hashing is not supported by this provider")

    def aead_encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        """AEAD-encrypt ``data`` with ``aad`` authenticated; returns ciphertext || tag."""
        raise UnsupportedError("this session has no AEAD cipher")

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        """Verify and decrypt ciphertext || tag; raises :class:`AuthenticationError`."""
        raise UnsupportedError("this session has no AEAD cipher")

    def aead_encrypt_into(
        self, iv: bytes, data: bytes | memoryview, out: memoryview, aad: bytes = b""
    ) -> None:
        """:meth:`aead_encrypt` into ``out`` (exactly ``len(data) + tag`` bytes).

        Providers that can write in place override this to save a copy per chunk.
        """
        out[:] = self.aead_encrypt(iv, bytes(data), aad)

    def aead_decrypt_into(
        self, iv: bytes, data: bytes | memoryview, out: memoryview, aad: bytes = b""
    ) -> None:
        """:meth:`aead_decrypt` into ``out`` (exactly ``len(data) - tag`` bytes)."""
        out[:] = self.aead_decrypt(iv, bytes(data), aad)

    @abstractmethod
    def info(self) -> SessionInfo: ...

    @abstractmethod
    def close(self) -> None:
        """Free the session; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Provider(ABC):
    """A source of crypto sessions. Construct it to open the underlying device.

    Constructors raise :class:`cdev.errors.UnavailableError` with one line saying why the
    provider cannot work here and what to do about it.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session: ...

    def close(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release the device; sessions must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# A provider factory takes the optional argument of a ``NAME:ARG`` provider spec
# (e.g. ``virtio:/dev/cryptodev1``) and returns an open provider.
ProviderFactory = Callable[[str | None], Provider]


@dataclass(frozen=True)
class ProviderEntry:
    name: str
    description: str
    factory: ProviderFactory
    plugin: str  # the plugin that registered it


def algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UnsupportedError(f"unknown algorithm {name!r}") from None


def check_cipher_request(
    data: bytes, iv: bytes, max_request: int, alg: Algorithm = AES_CBC_ALGORITHM
) -> None:
    """The checks cryptodev-linux makes before a cipher request, shared by every provider."""
    if len(iv) != alg.iv_size:
        raise ProviderError(f"IV must be {alg.iv_size} bytes, got {len(iv)}")
    if len(data) % alg.block_size:
        raise ProviderError(f"data length {len(data)} is not a multiple of {alg.block_size}")
    if len(data) < alg.min_len:
        raise ProviderError(f"{alg.name} needs at least {alg.min_len} bytes, got {len(data)}")
    if len(data) > max_request:
        raise ProviderError(f"request of {len(data)} bytes exceeds the maximum of {max_request}")


def next_iv(alg: Algorithm, iv: bytes, data_in: bytes, data_out: bytes, encrypt: bool) -> bytes:
    """The IV that continues a chained cipher after one request, as ``COP_FLAG_WRITE_IV``
    reports it: CBC's last ciphertext block, CTR's counter advanced by the blocks used."""
    if alg.name in (AES_CBC, DES3_CBC):
        return (data_out if encrypt else data_in)[-alg.block_size :]
    if alg.name == AES_CTR:
        blocks = -(-len(data_in) // AES_BLOCK)
        counter = (int.from_bytes(iv, "big") + blocks) % (1 << 128)
        return counter.to_bytes(AES_BLOCK, "big")
    return iv  # ECB has none; XTS and GCM are never chained


def cipher_in_pieces(
    alg: Algorithm,
    data: bytes,
    iv: bytes,
    max_request: int,
    encrypt: bool,
    run: Callable[[bytes, bytes], bytes],
) -> bytes:
    """Check a cipher request and run it as ``run(piece, iv)`` calls of at most ``max_request``.

    Providers whose device takes bounded requests share this. CBC, CTR and ECB chain
    exactly; an XTS request is one data unit (its tweak covers the whole), so it is
    refused above the limit rather than split into a different result.
    """
    check_cipher_request(data, iv, len(data), alg)
    n = len(data)
    if n <= max_request:
        return run(data, iv)
    if alg.name == AES_XTS:
        raise ProviderError(f"request of {n} bytes exceeds the maximum of {max_request}")
    step = max(AES_BLOCK, max_request - max_request % AES_BLOCK)
    out = []
    for off in range(0, n, step):
        piece = data[off : off + step]
        result = run(piece, iv)
        out.append(result)
        iv = next_iv(alg, iv, piece, result, encrypt)
    return b"".join(out)


def cbc_in_pieces(
    data: bytes, iv: bytes, max_request: int, encrypt: bool, run: Callable[[bytes, bytes], bytes]
) -> bytes:
    """:func:`cipher_in_pieces` for AES-CBC."""
    return cipher_in_pieces(AES_CBC_ALGORITHM, data, iv, max_request, encrypt, run)


def check_session_args(
    cipher: str | None, key: bytes | None, mac: str | None, mac_key: bytes | None
) -> tuple[Algorithm | None, Algorithm | None]:
    """Validate a session request against the table; returns the two algorithms."""
    if cipher is None and mac is None:
        raise ProviderError("a session needs a cipher, a MAC, or both")
    c = m = None
    if cipher is not None:
        c = ALGORITHMS.get(cipher)
        if c is None or c.kind not in (CIPHER, AEAD):
            raise UnsupportedError(f"unsupported cipher {cipher!r}")
        if key is None or len(key) not in c.key_sizes:
            sizes = ", ".join(str(k) for k in c.key_sizes)
            what = "AES" if cipher.startswith("aes") else cipher
            raise ProviderError(
                f"{what} key must be {sizes} bytes, got {0 if key is None else len(key)}"
            )
    if mac is not None:
        m = ALGORITHMS.get(mac)
        if m is None or m.kind not in (HASH, HMAC):
            raise UnsupportedError(f"unsupported MAC {mac!r}")
        if m.kind == HMAC and (not mac_key or len(mac_key) > HMAC_MAX_KEY):
            raise ProviderError(f"HMAC key must be 1 to {HMAC_MAX_KEY} bytes")
        if m.kind == HASH and mac_key:
            raise ProviderError(f"{mac} is a plain hash and takes no key")
    if c is not None and c.kind == AEAD and m is not None:
        raise ProviderError(f"{cipher} authenticates by itself and takes no MAC")
    return c, m

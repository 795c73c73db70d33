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

from cdev.errors import CdevError

AES_CBC = "aes-cbc"
HMAC_SHA256 = "hmac-sha256"
AES_BLOCK = 16
AES_KEY_SIZES = (16, 24, 32)
HMAC_SHA256_SIZE = 32


@dataclass(frozen=True)
class Algorithm:
    name: str  # AES_CBC, HMAC_SHA256, ...
    key_sizes: tuple[int, ...]  # accepted key lengths in bytes (HMAC: an upper bound range)
    block_size: int = 1
    digest_size: int = 0


@dataclass(frozen=True)
class Capabilities:
    driver: str  # what actually does the work, e.g. "OpenSSL 3.x via pyca/cryptography"
    ciphers: tuple[Algorithm, ...]
    macs: tuple[Algorithm, ...]
    max_request: int  # largest single request in bytes
    combined: bool = False  # one session may carry both a cipher and a MAC
    notes: tuple[str, ...] = ()


AES_CBC_ALGORITHM = Algorithm(AES_CBC, AES_KEY_SIZES, block_size=AES_BLOCK)
HMAC_SHA256_ALGORITHM = Algorithm(HMAC_SHA256, (1, 512), digest_size=HMAC_SHA256_SIZE)


def standard_capabilities(driver: str, max_request: int) -> Capabilities:
    """What every built-in provider offers: AES-CBC (128/192/256) and HMAC-SHA256."""
    return Capabilities(
        driver=driver,
        ciphers=(AES_CBC_ALGORITHM,),
        macs=(HMAC_SHA256_ALGORITHM,),
        max_request=max_request,
        combined=True,
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


class Session(ABC):
    """One open session. Close it (or use it as a context manager) to wipe its keys."""

    @abstractmethod
    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        """AES-CBC encrypt ``data`` (a multiple of the block size) with ``iv``; no padding."""

    @abstractmethod
    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        """AES-CBC decrypt ``data`` (a multiple of the block size) with ``iv``; no padding."""

    @abstractmethod
    def mac(self, data: bytes) -> bytes:
        """The MAC of ``data`` under the session's MAC key, on a MAC-only session.

        A session opened with both a cipher and a MAC follows cryptodev: it cannot MAC
        arbitrary data, so encrypt-then-MAC users open two sessions.
        """

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


def check_cipher_request(data: bytes, iv: bytes, max_request: int) -> None:
    """The checks cryptodev-linux makes before a CBC request, shared by every provider."""
    if len(iv) != AES_BLOCK:
        raise ProviderError(f"IV must be {AES_BLOCK} bytes, got {len(iv)}")
    if len(data) % AES_BLOCK:
        raise ProviderError(f"data length {len(data)} is not a multiple of {AES_BLOCK}")
    if len(data) > max_request:
        raise ProviderError(f"request of {len(data)} bytes exceeds the maximum of {max_request}")


def cbc_in_pieces(
    data: bytes, iv: bytes, max_request: int, encrypt: bool, run: Callable[[bytes, bytes], bytes]
) -> bytes:
    """Check a CBC request and run it as ``run(piece, iv)`` calls of at most ``max_request``.

    Providers whose device takes bounded requests share this: CBC's next IV is the last
    ciphertext block, of the output when encrypting and of the input when decrypting.
    """
    if len(iv) != AES_BLOCK:
        raise ProviderError(f"IV must be {AES_BLOCK} bytes, got {len(iv)}")
    n = len(data)
    if n % AES_BLOCK:
        raise ProviderError(f"data length {n} is not a multiple of {AES_BLOCK}")
    if n <= max_request:
        return run(data, iv)
    step = max(AES_BLOCK, max_request - max_request % AES_BLOCK)
    out = []
    for off in range(0, n, step):
        piece = data[off : off + step]
        result = run(piece, iv)
        out.append(result)
        iv = (result if encrypt else piece)[-AES_BLOCK:]
    return b"".join(out)


def check_session_args(
    cipher: str | None, key: bytes | None, mac: str | None, mac_key: bytes | None
) -> None:
    if cipher is None and mac is None:
        raise ProviderError("a session needs a cipher, a MAC, or both")
    if cipher is not None:
        if cipher != AES_CBC:
            raise ProviderError(f"unsupported cipher {cipher!r}")
        if key is None or len(key) not in AES_KEY_SIZES:
            raise ProviderError(
                f"AES key must be 16, 24 or 32 bytes, got {0 if key is None else len(key)}"
            )
    if mac is not None:
        if mac != HMAC_SHA256:
            raise ProviderError(f"unsupported MAC {mac!r}")
        if not mac_key or len(mac_key) > 512:
            raise ProviderError("HMAC key must be 1 to 512 bytes")

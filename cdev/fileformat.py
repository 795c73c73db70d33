"""The cdev encrypted file format, version 1 (specified in docs/file-format.md).

A 64-byte authenticated header, then the plaintext in 64 KiB chunks. Two cipher suites:

- suite 2 (the default when the provider has AES-GCM): each chunk sealed with
  AES-256-GCM under a nonce made of its index and a last-chunk flag (age's STREAM), see
  :mod:`cdev.stream_gcm`;
- suite 1: each chunk encrypted with AES-256-CBC under a fresh random IV and
  authenticated with HMAC-SHA256 over its index, a last-chunk flag, the IV and the
  ciphertext (encrypt-then-MAC).

Either way reordering, truncation, appending and tampering all fail a tag. The
primitives run through the chosen provider; nothing here does crypto by itself except
key derivation.
"""

from __future__ import annotations

import hmac
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from cdev import stream_gcm
from cdev.errors import CdevError, IntegrityError, UnavailableError
from cdev.keys import ScryptParams, hkdf, scrypt
from cdev.pkcs7 import PaddingError, unpad
from cdev.pkcs7 import pad as _pad
from cdev.provider import (
    AES_BLOCK,
    AES_CBC,
    AES_GCM,
    HMAC_SHA256,
    HMAC_SHA256_SIZE,
    Provider,
    Session,
)
from cdev.streamio import read_full as _read_full

if TYPE_CHECKING:  # suite 1 only: concurrent.futures costs start-up time (it loads logging)
    from concurrent.futures import Future

MAGIC = b"cdev-enc"
VERSION = 1
SUITE_AES256CBC_HMACSHA256 = 1
SUITE_AES256GCM = 2
SUITES = (SUITE_AES256CBC_HMACSHA256, SUITE_AES256GCM)
KDF_SCRYPT = 1
KDF_RAW_KEY = 2
CHUNK_LOG2 = 16
CHUNK = 1 << CHUNK_LOG2
SALT_LEN = 16
HEADER_LEN = 64
_HEADER_BODY = struct.Struct(">8sBBBBBBBx16s")  # 32 bytes, then a 32-byte tag
RECORD = AES_BLOCK + CHUNK + HMAC_SHA256_SIZE  # a full (non-final) chunk on disk
MIN_FINAL = AES_BLOCK + AES_BLOCK + HMAC_SHA256_SIZE

THREADS_ENV = "CDEV_THREADS"  # threads for chunk crypto (suite 2: 2 at most); default: up to 2

Progress = Callable[[int], None]  # called with the number of input bytes just consumed


@dataclass(frozen=True)
class Header:
    kdf: int
    scrypt: ScryptParams
    salt: bytes
    suite: int = SUITE_AES256CBC_HMACSHA256

    def body(self) -> bytes:
        p = self.scrypt
        log_n, r, pp = (p.log_n, p.r, p.p) if self.kdf == KDF_SCRYPT else (0, 0, 0)
        return _HEADER_BODY.pack(
            MAGIC,
            VERSION,
            self.suite,
            self.kdf,
            log_n,
            r,
            pp,
            CHUNK_LOG2,
            self.salt,
        )


@dataclass(frozen=True)
class Keys:
    enc: bytes
    mac: bytes


def derive_keys(header: Header, passphrase: bytes | None, key: bytes | None) -> Keys:
    if header.kdf == KDF_SCRYPT:
        if passphrase is None:
            raise CdevError("this file was encrypted with a passphrase; give the passphrase")
        master = scrypt(passphrase, header.salt, header.scrypt)
    else:
        if key is None:
            raise CdevError("this file was encrypted with a key file; use --key-file")
        master = key
    if header.suite == SUITE_AES256GCM:
        # Distinct keys for the chunks and the header, so their nonces never collide.
        return Keys(
            enc=hkdf(master, b"cdev-enc v1 suite 2 aes-256-gcm", salt=header.salt),
            mac=hkdf(master, b"cdev-enc v1 suite 2 header", salt=header.salt),
        )
    return Keys(
        enc=hkdf(master, b"cdev-enc v1 aes-256-cbc", salt=header.salt),
        mac=hkdf(master, b"cdev-enc v1 hmac-sha256", salt=header.salt),
    )


def _header_tag(mac: Session, body: bytes) -> bytes:
    return mac.mac(b"cdev-enc header\x00" + body)


def _chunk_tag(mac: Session, index: int, last: bool, iv: bytes, ct: bytes) -> bytes:
    return mac.mac(b"".join((struct.pack(">QB", index, last), iv, ct)))


def _open_sessions(provider: Provider, keys: Keys) -> tuple[Session, Session]:
    cipher = provider.open_session(cipher=AES_CBC, key=keys.enc)
    try:
        mac = provider.open_session(mac=HMAC_SHA256, mac_key=keys.mac)
    except BaseException:
        cipher.close()
        raise
    return cipher, mac


class _Workers:
    """Runs per-chunk work on a few threads and hands results back in order.

    Chunks are independent (own IV, own tag), and the providers release the GIL inside
    their crypto (OpenSSL, ioctl, AF_ALG), so on two cores encryption and MAC of
    neighbouring chunks overlap. Each thread opens its own sessions: providers need not be
    thread-safe. At most ``2 * threads`` chunks are in flight, so memory stays bounded.
    """

    def __init__(self, provider: Provider, keys: Keys, threads: int) -> None:
        self._provider, self._keys = provider, keys
        self._local = threading.local()
        self._opened: list[tuple[Session, Session]] = []
        self._lock = threading.Lock()
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self._pending: deque[Future[bytes]] = deque()
        self._depth = 2 * threads

    def sessions(self) -> tuple[Session, Session]:
        found: tuple[Session, Session] | None = getattr(self._local, "sessions", None)
        if found is None:
            found = _open_sessions(self._provider, self._keys)
            self._local.sessions = found
            with self._lock:
                self._opened.append(found)
        return found

    def submit(self, fn: Callable[..., bytes], *args: object) -> Iterator[bytes]:
        """Queue ``fn(*args)``; yield the results that are due, oldest first."""
        if self._pool is None:
            yield fn(*args)
            return
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) >= self._depth:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[bytes]:
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for cipher, mac in self._opened:
            cipher.close()
            mac.close()


def default_threads() -> int:
    value = os.environ.get(THREADS_ENV)
    if value is not None:
        try:
            return max(1, min(16, int(value)))
        except ValueError:
            raise CdevError(f"{THREADS_ENV} must be a number, got {value!r}") from None
    return min(2, len(os.sched_getaffinity(0)))


def default_suite(provider: Provider) -> int:
    """Suite 2 (AES-256-GCM) when the provider has AES-GCM, else suite 1."""
    caps = provider.capabilities()
    return SUITE_AES256GCM if caps.supports(AES_GCM) else SUITE_AES256CBC_HMACSHA256


def _gcm_header_session(provider: Provider, keys: Keys) -> Session:
    if not provider.capabilities().supports(AES_GCM):
        raise UnavailableError(
            f"suite 2 needs AES-GCM, which provider '{provider.name}' does not offer; "
            "use another provider (cdev session info --all), or --suite 1 to encrypt"
        )
    return provider.open_session(cipher=AES_GCM, key=keys.mac)


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    *,
    passphrase: bytes | None = None,
    key: bytes | None = None,
    params: ScryptParams | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    suite: int | None = None,
) -> int:
    """Encrypt ``src`` to ``dst``; returns the number of plaintext bytes.

    ``suite`` defaults to :func:`default_suite` for the provider.
    """
    if (passphrase is None) == (key is None):
        raise ValueError("give exactly one of passphrase and key")
    suite = default_suite(provider) if suite is None else suite
    if suite not in SUITES:
        raise CdevError(f"unknown cipher suite {suite} (known: 1, 2)")
    header = Header(
        kdf=KDF_SCRYPT if passphrase is not None else KDF_RAW_KEY,
        scrypt=params or ScryptParams(),
        salt=os.urandom(SALT_LEN),
        suite=suite,
    )
    keys = derive_keys(header, passphrase, key)
    if suite == SUITE_AES256GCM:
        body = header.body()
        with _gcm_header_session(provider, keys) as hs:
            dst.write(body + stream_gcm.header_tag(hs, body))
        return stream_gcm.encrypt_chunks(
            src, dst, provider, keys.enc, CHUNK, threads or default_threads(), progress
        )
    workers = _Workers(provider, keys, threads or default_threads())

    def seal(index: int, last: bool, chunk: bytes) -> bytes:
        cipher, mac = workers.sessions()
        iv = os.urandom(AES_BLOCK)
        ct = cipher.encrypt(_pad(chunk) if last else chunk, iv)
        return b"".join((iv, ct, _chunk_tag(mac, index, last, iv, ct)))

    total = 0
    try:
        body = header.body()
        dst.write(body + _header_tag(workers.sessions()[1], body))
        index = 0
        chunk = _read_full(src, CHUNK)
        while True:
            # A chunk is final when it is short: a full chunk at EOF is followed by an
            # empty final one, so the reader can tell the two apart by size alone.
            last = len(chunk) < CHUNK
            for record in workers.submit(seal, index, last, chunk):
                dst.write(record)
            total += len(chunk)
            if progress:
                progress(len(chunk))
            if last:
                for record in workers.drain():
                    dst.write(record)
                return total
            index += 1
            chunk = _read_full(src, CHUNK)
    finally:
        workers.close()


def read_header(src: BinaryIO) -> tuple[Header, bytes, bytes]:
    raw = _read_full(src, HEADER_LEN)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise CdevError("not a cdev encrypted file (bad magic)")
    if len(raw) < HEADER_LEN:
        raise IntegrityError("truncated file: the header is incomplete")
    body, tag = raw[:32], raw[32:]
    _, version, suite, kdf, log_n, r, p, chunk_log2, salt = _HEADER_BODY.unpack(body)
    if version != VERSION:
        raise CdevError(f"unsupported file version {version} (this cdev reads version {VERSION})")
    if suite not in SUITES or chunk_log2 != CHUNK_LOG2:
        raise CdevError(f"unsupported cipher suite {suite} / chunk size 2^{chunk_log2}")
    if kdf not in (KDF_SCRYPT, KDF_RAW_KEY):
        raise CdevError(f"unsupported key derivation {kdf}")
    params = ScryptParams(log_n, r, p) if kdf == KDF_SCRYPT else ScryptParams()
    if kdf == KDF_SCRYPT:
        params.check()  # attacker-chosen costs must not exhaust memory or time
    return Header(kdf, params, salt, suite), body, tag


def _records(src: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    cur = _read_full(src, RECORD)
    if not cur:
        raise IntegrityError("truncated file: no final chunk")
    while True:
        nxt = _read_full(src, RECORD) if len(cur) == RECORD else b""
        yield cur, not nxt
        if not nxt:
            return
        cur = nxt


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    *,
    passphrase: bytes | None = None,
    key: bytes | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    header_read: tuple[Header, bytes, bytes] | None = None,
) -> int:
    """Decrypt ``src`` to ``dst``, writing each chunk only once its MAC verified.

    Raises :class:`IntegrityError` on a wrong key or any modification; the caller discards
    what was written (output is atomic for files). ``header_read`` is what
    :func:`read_header` returned, for callers that looked at the header first.
    """
    header, body, tag = header_read or read_header(src)
    keys = derive_keys(header, passphrase, key)
    if header.suite == SUITE_AES256GCM:
        with _gcm_header_session(provider, keys) as hs:
            stream_gcm.check_header(hs, body, tag)
        if progress:
            progress(HEADER_LEN)
        return stream_gcm.decrypt_chunks(
            src, dst, provider, keys.enc, CHUNK, threads or default_threads(), progress
        )
    workers = _Workers(provider, keys, threads or default_threads())

    def open_record(index: int, last: bool, record: bytes) -> bytes:
        cipher, mac = workers.sessions()
        size = len(record)
        bad_final = size < MIN_FINAL or (size - AES_BLOCK - HMAC_SHA256_SIZE) % AES_BLOCK
        if (last and bad_final) or (not last and size != RECORD):
            raise IntegrityError(f"truncated or corrupt file at chunk {index}")
        iv, ct, t = record[:AES_BLOCK], record[AES_BLOCK:-HMAC_SHA256_SIZE], record[-32:]
        if not hmac.compare_digest(_chunk_tag(mac, index, last, iv, ct), t):
            raise IntegrityError(
                f"chunk {index} failed authentication: the file was modified, "
                "reordered, truncated or extended"
            )
        pt = cipher.decrypt(ct, iv)
        if last:
            # The MAC already vouched for these bytes, so bad padding means a bug or a
            # forged file under the right key: refuse it all the same.
            try:
                pt = unpad(pt)
            except PaddingError:
                raise IntegrityError(f"chunk {index} has invalid padding") from None
        return pt

    total = 0
    try:
        if not hmac.compare_digest(_header_tag(workers.sessions()[1], body), tag):
            raise IntegrityError("wrong passphrase or key, or the file header was modified")
        if progress:
            progress(HEADER_LEN)
        for index, (record, last) in enumerate(_records(src)):
            for pt in workers.submit(open_record, index, last, record):
                dst.write(pt)
                total += len(pt)
            if progress:
                progress(len(record))
        for pt in workers.drain():
            dst.write(pt)
            total += len(pt)
        return total
    finally:
        workers.close()

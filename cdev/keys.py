"""Where keys come from: passphrases (prompt, file, environment) stretched with scrypt,
or raw key files. Shared by ``cdev crypt`` and ``cdev chat``."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cdev.errors import CdevError, UsageError

PASSPHRASE_ENV = "CDEV_PASSPHRASE"
MAX_PASSPHRASE_FILE = 64 * 1024


# Limits on scrypt costs read from untrusted input (file headers, chat peers), checked before
# scrypt runs. Memory is scrypt's V array, 128 * r * N bytes: at most 256 MiB, which is what
# the default below needs. Work is N * r * p block mixes: at most 10x the default's (~14 s
# here where the default takes ~1.4 s). OpenSSL adds 128 * r * (p + 2) bytes (<= 3 MiB).
MIN_LOG_N = 10
MAX_LOG_N = 20  # with r = 2, 2**20 * 256 bytes is the memory cap (r = 1 needs N < 2**16)
MAX_SCRYPT_MEMORY = 256 << 20
MAX_WORK_FACTOR = 10


@dataclass(frozen=True)
class ScryptParams:
    log_n: int = 18  # N = 2**18, r = 8: age's default; ~1.4 s and 256 MiB here
    r: int = 8
    p: int = 1

    @property
    def memory(self) -> int:
        """Bytes of scrypt's main array (128 * r * N), the allocation that counts."""
        return 128 * self.r << self.log_n

    @property
    def work(self) -> int:
        """Block mixes scrypt runs (N * r * p): its time is proportional to this."""
        return self.r * self.p << self.log_n

    def check(self) -> None:
        """Bound parameters read from untrusted input (files, peers) before using them."""
        ok = MIN_LOG_N <= self.log_n <= MAX_LOG_N and self.r >= 1 and self.p >= 1
        ok = ok and self.log_n < 16 * self.r  # scrypt itself requires N < 2**(16 r)
        if not ok or self.memory > MAX_SCRYPT_MEMORY or self.work > MAX_SCRYPT_WORK:
            raise CdevError(
                f"scrypt parameters out of range (log2 N={self.log_n}, r={self.r}, p={self.p}): "
                f"cdev allows at most {MAX_SCRYPT_MEMORY >> 20} MiB of memory and "
                f"{MAX_WORK_FACTOR}x the default work"
            )


MAX_SCRYPT_WORK = MAX_WORK_FACTOR * ScryptParams().work


def scrypt(passphrase: bytes, salt: bytes, params: ScryptParams, length: int = 32) -> bytes:
    params.check()
    kdf = Scrypt(salt=salt, length=length, n=1 << params.log_n, r=params.r, p=params.p)
    try:
        return kdf.derive(passphrase)
    except MemoryError:  # what cryptography raises for any failure inside OpenSSL's scrypt
        raise CdevError(
            f"scrypt could not run with log2 N={params.log_n}, r={params.r}, p={params.p} "
            f"({params.memory >> 20} MiB): not enough memory"
        ) from None


def hkdf(key: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def read_passphrase(
    passphrase_file: Path | None = None, *, confirm: bool = False, prompt: str = "Passphrase"
) -> bytes:
    """The passphrase from ``--passphrase-file``, else ``CDEV_PASSPHRASE``, else a prompt.

    The prompt only happens on a terminal (without echo); otherwise a clear error says how
    to pass it. ``confirm`` asks twice (for encryption).
    """
    if passphrase_file is not None:
        try:
            with open(passphrase_file, "rb") as f:
                data = f.read(MAX_PASSPHRASE_FILE + 1)
        except OSError as exc:
            raise UsageError(
                f"cannot read passphrase file {passphrase_file}: {exc.strerror}"
            ) from None
        if len(data) > MAX_PASSPHRASE_FILE:
            raise UsageError(f"passphrase file {passphrase_file} is larger than 64 KiB")
        value = data.rstrip(b"\r\n")  # a trailing newline from `echo` is not part of it
        if not value:
            raise UsageError(f"passphrase file {passphrase_file} is empty")
        return value
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        if not env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return env.encode()
    if not sys.stdin.isatty():
        raise UsageError(
            f"no passphrase: use --passphrase-file FILE or set {PASSPHRASE_ENV} "
            "(no terminal to prompt on)"
        )
    first = getpass.getpass(f"{prompt}: ")
    if not first:
        raise UsageError("empty passphrase")
    if confirm and getpass.getpass(f"{prompt} (again): ") != first:
        raise UsageError("passphrases do not match")
    return first.encode()


def read_key_file(path: Path, size: int = 32) -> bytes:
    """A raw key file: exactly ``size`` bytes, or ``2*size`` hex digits (newline allowed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) == size:
        return data
    text = data.strip()
    if len(text) == 2 * size:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise UsageError(
        f"key file {path} must hold {size} raw bytes or {2 * size} hex digits, "
        f"it has {len(data)} bytes"
    )

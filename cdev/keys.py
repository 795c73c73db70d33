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


@dataclass(frozen=True)
class ScryptParams:
    log_n: int = 15  # N = 2**15: ~0.15 s here; interactive-grade, as age's default class
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Bound parameters read from untrusted input (files, peers) before using them."""
        if not (10 <= self.log_n <= 20) or not (1 <= self.r <= 32) or not (1 <= self.p <= 16):
            raise CdevError(
                f"scrypt parameters out of range (log2 N={self.log_n}, r={self.r}, p={self.p})"
            )


def scrypt(passphrase: bytes, salt: bytes, params: ScryptParams, length: int = 32) -> bytes:
    params.check()
    kdf = Scrypt(salt=salt, length=length, n=1 << params.log_n, r=params.r, p=params.p)
    return kdf.derive(passphrase)


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

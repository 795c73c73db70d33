"""Plain AES-CBC with PKCS#7 padding, byte-identical to ``openssl enc -aes-N-cbc -K -iv``.

No authentication: this mode exists to interoperate with openssl and to compare speeds,
not to protect data (use the default authenticated format for that).
"""

from __future__ import annotations

import re
from typing import BinaryIO

from cdev.errors import CdevError, UsageError
from cdev.fileformat import Progress
from cdev.pkcs7 import PaddingError, pad, unpad
from cdev.provider import AES_BLOCK, AES_CBC, Provider
from cdev.streamio import read_full

STEP = 64 * 1024
RAW_CIPHERS = {"aes-128-cbc": 16, "aes-192-cbc": 24, "aes-256-cbc": 32}


def parse_hex(name: str, value: str, size: int) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]*", value) or len(value) != 2 * size:
        raise UsageError(f"--{name} must be {2 * size} hex digits ({size} bytes)")
    return bytes.fromhex(value)


def raw_params(cipher: str, key_hex: str | None, iv_hex: str | None) -> tuple[bytes, bytes]:
    if cipher not in RAW_CIPHERS:
        raise UsageError(f"--cipher must be one of {', '.join(RAW_CIPHERS)}")
    if key_hex is None or iv_hex is None:
        raise UsageError("--raw needs --key HEX and --iv HEX")
    return parse_hex("key", key_hex, RAW_CIPHERS[cipher]), parse_hex("iv", iv_hex, AES_BLOCK)


def encrypt_raw(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    key: bytes,
    iv: bytes,
    progress: Progress | None = None,
) -> int:
    total = 0
    with provider.open_session(cipher=AES_CBC, key=key) as s:
        while True:
            data = read_full(src, STEP)
            total += len(data)
            if progress:
                progress(len(data))
            if len(data) < STEP:
                dst.write(s.encrypt(pad(data), iv))
                return total
            ct = s.encrypt(data, iv)
            iv = ct[-AES_BLOCK:]
            dst.write(ct)


def decrypt_raw(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    key: bytes,
    iv: bytes,
    progress: Progress | None = None,
) -> int:
    total = 0
    with provider.open_session(cipher=AES_CBC, key=key) as s:
        data = read_full(src, STEP)
        while True:
            nxt = read_full(src, STEP) if len(data) == STEP else b""
            if progress:
                progress(len(data))
            if len(data) % AES_BLOCK or (not nxt and not data):
                raise CdevError("input is not a whole number of 16-byte blocks: not AES-CBC data")
            pt = s.decrypt(data, iv)
            iv = data[-AES_BLOCK:]
            if not nxt:
                try:
                    last = unpad(pt)
                except PaddingError:
                    raise CdevError(
                        "bad decrypt: wrong key or IV, or corrupt input (bad padding)"
                    ) from None
                dst.write(last)
                return total + len(last)
            dst.write(pt)
            total += len(pt)
            data = nxt

"""PKCS#7 padding for AES blocks, done by ``cryptography`` (its unpadding check runs in
constant time) rather than by hand."""

from __future__ import annotations

from cryptography.hazmat.primitives.padding import PKCS7

_BITS = 128  # the AES block


class PaddingError(ValueError):
    """The last block does not end in valid PKCS#7 padding."""


def pad(data: bytes) -> bytes:
    padder = PKCS7(_BITS).padder()
    return padder.update(data) + padder.finalize()


def unpad(data: bytes) -> bytes:
    unpadder = PKCS7(_BITS).unpadder()
    try:
        return unpadder.update(data) + unpadder.finalize()
    except ValueError:
        raise PaddingError("invalid PKCS#7 padding") from None

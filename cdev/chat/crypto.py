"""Keys and sealed records: HKDF key schedule, AES-CBC + HMAC-SHA256 encrypt-then-MAC,
Ed25519 member keys.

All cipher and MAC work goes through a :class:`cdev.provider.Provider`, so ``--provider virtio``
puts every message through the device. Key agreement (SPAKE2, :mod:`cdev.chat.pake`), HKDF and
signatures stay in software: providers only offer the cryptodev primitives.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cdev import pkcs7
from cdev.errors import IntegrityError
from cdev.keys import hkdf
from cdev.provider import AES_BLOCK, AES_CBC, HMAC_SHA256, HMAC_SHA256_SIZE, Provider, Session

LABEL = b"cdev-chat v2 "
NONCE_SIZE = 16
KEY_SIZE = 32  # Ed25519 public key
SIG_SIZE = 64  # Ed25519 signature
SEQ = struct.Struct("!Q")
IV_SIZE = AES_BLOCK
TAG_SIZE = HMAC_SHA256_SIZE
# seq | iv | at least one block | tag
MIN_SEALED = SEQ.size + IV_SIZE + AES_BLOCK + TAG_SIZE


def derive(master: bytes, label: str, context: bytes, length: int = 32) -> bytes:
    return hkdf(master, LABEL + label.encode() + b"\0" + context, length)


def _groups(raw: bytes) -> str:
    text = raw.hex()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def fingerprint(master: bytes, context: bytes) -> str:
    """A short code both sides can read aloud to compare sessions."""
    return _groups(derive(master, "fingerprint", context, 6))


class SigningKey:
    """A member's Ed25519 key: made fresh for every join, never stored."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.fingerprint = key_fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def key_digest(public: bytes) -> bytes:
    return hashlib.sha256(LABEL + b"key\0" + public).digest()


def key_fingerprint(public: bytes) -> str:
    """What people compare out of band to know a member's key: 16 hex digits."""
    return _groups(key_digest(public)[:8])


def load_public(public: bytes) -> Ed25519PublicKey:
    """A peer's public key; IntegrityError when the bytes are not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(public)
    except ValueError:
        raise IntegrityError("malformed signing key") from None


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def transcript(*hellos: bytes) -> bytes:
    """Binds keys to the exact hello records exchanged (salts, nonces, versions, modes)."""
    h = hashlib.sha256()
    for body in hellos:
        h.update(struct.pack("!I", len(body)))
        h.update(body)
    return h.digest()


def unpad(data: bytes) -> bytes:
    try:
        return pkcs7.unpad(data)
    except pkcs7.PaddingError:
        raise IntegrityError("record has bad padding after a valid MAC (peer bug)") from None


class _Keys:
    """A cipher session and a MAC-only session on one provider.

    Always two sessions: encrypt-then-MAC needs a MAC over the ciphertext, and a combined
    cryptodev session can only MAC the plaintext of its own cipher operation.
    """

    def __init__(self, provider: Provider, enc_key: bytes, mac_key: bytes) -> None:
        self.cipher = provider.open_session(cipher=AES_CBC, key=enc_key)
        try:
            self.macer: Session = provider.open_session(mac=HMAC_SHA256, mac_key=mac_key)
        except BaseException:
            self.cipher.close()
            raise

    def close(self) -> None:
        self.cipher.close()
        self.macer.close()


class Sealer:
    """Seals outgoing records of one direction, numbering them from 0."""

    def __init__(self, provider: Provider, enc_key: bytes, mac_key: bytes) -> None:
        self._keys = _Keys(provider, enc_key, mac_key)
        self.seq = 0

    def mac(self, data: bytes) -> bytes:
        return self._keys.macer.mac(data)

    def seal(self, rtype: int, plaintext: bytes) -> bytes:
        iv = os.urandom(IV_SIZE)
        head = SEQ.pack(self.seq) + iv
        ct = self._keys.cipher.encrypt(pkcs7.pad(plaintext), iv)
        # The record type and sequence number are under the MAC: a GOODBYE cannot be forged
        # from a DATA record and records cannot be replayed or reordered unnoticed.
        tag = self._keys.macer.mac(bytes([rtype]) + head + ct)
        self.seq += 1
        return head + ct + tag

    def close(self) -> None:
        self._keys.close()


class Opener:
    """Verifies and opens incoming records of one direction, in order."""

    def __init__(self, provider: Provider, enc_key: bytes, mac_key: bytes, who: str) -> None:
        self._keys = _Keys(provider, enc_key, mac_key)
        self.expected = 0
        self.who = who

    def mac(self, data: bytes) -> bytes:
        return self._keys.macer.mac(data)

    def open(self, rtype: int, body: bytes, check: Callable[[], None] | None = None) -> bytes:
        """The plaintext; ``check`` runs after the MAC and before the sequence number (rooms
        verify the sender's signature there, so a forgery is named as such)."""
        n = len(body)
        if n < MIN_SEALED or (n - SEQ.size - IV_SIZE - TAG_SIZE) % AES_BLOCK:
            raise IntegrityError(f"malformed encrypted record from {self.who} ({n} bytes)")
        signed, tag = body[:-TAG_SIZE], body[-TAG_SIZE:]
        if not hmac.compare_digest(self._keys.macer.mac(bytes([rtype]) + signed), tag):
            raise IntegrityError(f"record from {self.who} failed authentication (tampered)")
        if check is not None:
            check()
        (seq,) = SEQ.unpack_from(body)
        if seq != self.expected:
            what = "replayed" if seq < self.expected else "reordered or dropped"
            raise IntegrityError(
                f"{what} record from {self.who} (sequence {seq}, expected {self.expected})"
            )
        self.expected += 1
        iv = body[SEQ.size : SEQ.size + IV_SIZE]
        return unpad(self._keys.cipher.decrypt(signed[SEQ.size + IV_SIZE :], iv))

    def close(self) -> None:
        self._keys.close()

"""Keys and sealed records: scrypt + HKDF key schedule, AES-CBC + HMAC-SHA256 encrypt-then-MAC.

All cipher and MAC work goes through a :class:`cdev.provider.Provider`, so ``--provider virtio``
puts every message through the device. Key derivation (scrypt, HKDF) stays in software: it runs
once per connection and providers only offer the cryptodev primitives.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cdev.errors import IntegrityError
from cdev.keys import ScryptParams, hkdf, scrypt
from cdev.provider import AES_BLOCK, AES_CBC, HMAC_SHA256, HMAC_SHA256_SIZE, Provider, Session

LABEL = b"cdev-chat v1 "
SALT_SIZE = 16
NONCE_SIZE = 16
SEQ = struct.Struct("!Q")
IV_SIZE = AES_BLOCK
TAG_SIZE = HMAC_SHA256_SIZE
# seq | iv | at least one block | tag
MIN_SEALED = SEQ.size + IV_SIZE + AES_BLOCK + TAG_SIZE
# Chat uses a cheaper scrypt than files: it runs on every connection, and the salt is fresh.
CHAT_SCRYPT = ScryptParams(log_n=15)


def master_key(passphrase: bytes, salt: bytes, params: ScryptParams) -> bytes:
    return scrypt(passphrase, salt, params)


def derive(master: bytes, label: str, context: bytes, length: int = 32) -> bytes:
    return hkdf(master, LABEL + label.encode() + b"\0" + context, length)


def fingerprint(master: bytes, context: bytes) -> str:
    """A short code both sides can read aloud to compare sessions."""
    raw = derive(master, "fingerprint", context, 6).hex()
    return "-".join(raw[i : i + 4] for i in range(0, 12, 4))


def transcript(*hellos: bytes) -> bytes:
    """Binds keys to the exact hello records exchanged (salts, nonces, versions, modes)."""
    h = hashlib.sha256()
    for body in hellos:
        h.update(struct.pack("!I", len(body)))
        h.update(body)
    return h.digest()


def pad(data: bytes) -> bytes:
    n = AES_BLOCK - len(data) % AES_BLOCK
    return data + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    n = data[-1] if data else 0
    if not 1 <= n <= AES_BLOCK or data[-n:] != bytes([n]) * n:
        raise IntegrityError("record has bad padding after a valid MAC (peer bug)")
    return data[:-n]


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
        ct = self._keys.cipher.encrypt(pad(plaintext), iv)
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

    def open(self, rtype: int, body: bytes) -> bytes:
        n = len(body)
        if n < MIN_SEALED or (n - SEQ.size - IV_SIZE - TAG_SIZE) % AES_BLOCK:
            raise IntegrityError(f"malformed encrypted record from {self.who} ({n} bytes)")
        signed, tag = body[:-TAG_SIZE], body[-TAG_SIZE:]
        if not hmac.compare_digest(self._keys.macer.mac(bytes([rtype]) + signed), tag):
            raise IntegrityError(f"record from {self.who} failed authentication (tampered)")
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

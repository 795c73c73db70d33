"""SPAKE2 (the ``spake2`` package, as magic-wormhole uses) behind a small typed API.

A party that does not know the passphrase learns at most one guess per run: the messages are
group elements blinded by the passphrase, and each side only proves its key after the other
committed to its own element. No KDF cost is negotiated: nothing the peer sends sets a cost.
"""

from __future__ import annotations

import hashlib
from typing import Any

import spake2  # type: ignore[import-untyped]

from cdev.chat.framing import ProtocolError

MESSAGE_SIZE = 33  # side byte + Ed25519 group element


class Pake:
    """One side of one SPAKE2 run; ``first`` is side A. Use each instance once."""

    def __init__(self, passphrase: bytes, first: bool, id_a: bytes, id_b: bytes) -> None:
        # The spake2 package hashes the passphrase to a scalar itself; prehashing keeps long
        # passphrases (up to the 64 KiB a file may hold) cheap.
        pw = hashlib.sha256(b"cdev-chat v2 passphrase\0" + passphrase).digest()
        cls: Any = spake2.SPAKE2_A if first else spake2.SPAKE2_B
        self._state = cls(pw, idA=id_a, idB=id_b)
        self.message: bytes = self._state.start()

    def finish(self, theirs: bytes) -> bytes:
        """The shared 32-byte key (equal on both sides only with the same passphrase)."""
        if len(theirs) != MESSAGE_SIZE:
            raise ProtocolError(f"malformed PAKE message ({len(theirs)} bytes)")
        try:
            key: bytes = self._state.finish(theirs)
        except (ValueError, AssertionError, spake2.spake2.SPAKEError):
            # not a group element, the wrong side, or our own message reflected back
            raise ProtocolError("malformed PAKE message") from None
        return key

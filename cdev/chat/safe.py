"""Peer-supplied text made safe for a terminal.

Nicknames, error texts, leave reasons and messages come from peers, brokers or buses. Before any
of them reaches a terminal (either view, or stderr) escape sequences are removed whole (so no
residue such as ``]0;title`` is left to confuse the reader) and every other control or format
character (C0, C1, DEL, bidirectional overrides, zero-width characters) is replaced.
"""

from __future__ import annotations

import re

# ESC-introduced sequences: CSI (ESC [ ... final), OSC/DCS/APC/PM/SOS strings (up to BEL or
# ESC \ or the end), and two-character escapes. C1 CSI/OSC (0x9b, 0x9d) likewise.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]P^_X]|[\x9d\x90\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
REPLACEMENT = "\ufffd"


def safe_text(text: str, limit: int | None = None) -> str:
    """``text`` without escape sequences and with other unprintable characters replaced."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    text = _ESCAPES.sub("", text)
    return "".join(c if c.isprintable() else (" " if c == "\t" else REPLACEMENT) for c in text)


def safe_bytes(data: bytes) -> bytes:
    """A message for a terminal: UTF-8 (invalid bytes replaced) made safe."""
    return safe_text(data.decode("utf-8", "replace")).encode()

"""Reading exact amounts from streams that may return short reads (pipes, sockets, stdin)."""

from __future__ import annotations

from typing import BinaryIO


def read_full(f: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at end of file."""
    parts, left = [], n
    while left:
        b = f.read(left)
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)

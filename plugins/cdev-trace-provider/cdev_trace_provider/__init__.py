"""``trace``: a provider that wraps another and reports each operation's count, bytes and time.

Use as ``--provider trace:INNER`` (``INNER`` defaults to ``software``), e.g.
``cdev crypt encrypt f --provider trace:virtio``.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from cdev.errors import UsageError
from cdev.hookspecs import hookimpl
from cdev.plugins import get_registry
from cdev.provider import Capabilities, Provider, Session, SessionInfo


@dataclass
class Stat:
    count: int = 0
    nbytes: int = 0
    seconds: float = 0.0


class TraceSession(Session):
    def __init__(self, inner: Session, stats: dict[str, Stat]) -> None:
        self._inner = inner
        self._stats = stats

    def _timed(self, op: str, n: int, fn: Callable[[], bytes]) -> bytes:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            s = self._stats[op]
            s.count += 1
            s.nbytes += n
            s.seconds += time.perf_counter() - start

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._timed("encrypt", len(data), lambda: self._inner.encrypt(data, iv))

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        return self._timed("decrypt", len(data), lambda: self._inner.decrypt(data, iv))

    def mac(self, data: bytes) -> bytes:
        return self._timed("mac", len(data), lambda: self._inner.mac(data))

    def update(self, data: bytes) -> None:
        def run() -> bytes:
            self._inner.update(data)
            return b""

        self._timed("update", len(data), run)

    def final(self) -> bytes:
        return self._timed("final", 0, self._inner.final)

    def aead_encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        n = len(data)
        return self._timed("aead_encrypt", n, lambda: self._inner.aead_encrypt(iv, data, aad))

    def aead_decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        n = len(data)
        return self._timed("aead_decrypt", n, lambda: self._inner.aead_decrypt(iv, data, aad))

    def info(self) -> SessionInfo:
        return self._inner.info()

    def close(self) -> None:
        self._inner.close()


class TraceProvider(Provider):
    name = "trace"
    description = "wraps another provider (trace:INNER) and reports per-operation statistics"

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self._stats: dict[str, Stat] = defaultdict(Stat)

    def capabilities(self) -> Capabilities:
        return self._inner.capabilities()

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        return TraceSession(self._inner.open_session(cipher, key, mac, mac_key), self._stats)

    def close(self) -> None:
        self._inner.close()
        for op, s in sorted(self._stats.items()):
            rate = s.nbytes / s.seconds / 1e6 if s.seconds else 0.0
            print(
                f"trace[{self._inner.name}]: {op}: {s.count} ops, {s.nbytes} bytes, "
                f"{s.seconds * 1e3:.1f} ms, {rate:.1f} MB/s",
                file=sys.stderr,
            )


def open_trace(arg: str | None) -> Provider:
    inner = arg or "software"
    if inner.split(":", 1)[0] == "trace":
        raise UsageError("trace cannot wrap itself")
    return TraceProvider(get_registry().open_provider(inner))


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(TraceProvider.name, TraceProvider.description, open_trace)

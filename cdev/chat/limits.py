"""Per-source handshake limits, so a stranger can neither guess passphrases quickly nor make a
listener or broker burn CPU on PAKE runs.

Each source (an IP address, or a local user for Unix sockets) has a token bucket of handshakes;
over it a connection is refused before any crypto runs. The table of sources is bounded: when
full, sources whose bucket has refilled are forgotten first, then the oldest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class HandshakeLimiter:
    def __init__(
        self,
        burst: float = 5.0,
        per_second: float = 0.5,
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, stamp

    def allow(self, source: str) -> bool:
        """Spend one handshake of ``source``; False when it is over its rate."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.per_second)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._evict(now)
        return allowed

    def _evict(self, now: float) -> None:
        full = self.burst - 1e-9
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self.per_second >= full:
                del self._buckets[key]
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)

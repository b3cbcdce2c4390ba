"""Per-address request rate limiting (token buckets), sans-IO.

A flood from one address must cost it its own traffic, not everyone's service: each
source address has a bucket refilled at ``rate`` tokens a second up to ``burst``;
a request without a token is dropped, and once a second the sender is told why
with a 503 and Retry-After (RFC 3261 section 21.5.4) where it can be addressed.
"""

from __future__ import annotations

__all__ = ["RateLimiter"]

MAX_TRACKED = 100_000


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._told: dict[str, float] = {}  # address -> when it last got a 503

    def __len__(self) -> int:
        """Addresses tracked (at most MAX_TRACKED before a purge)."""
        return len(self._buckets)

    def allow(self, address: str, now: float) -> bool:
        tokens, at = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            return True
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED:
            self.purge(now)
        return False

    def would_allow(self, address: str, now: float) -> bool:
        """``allow`` without taking the token: for a path that may still give the
        message back to the one that calls ``allow``."""
        tokens, at = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate) >= 1.0

    def should_tell(self, address: str, now: float) -> bool:
        """At most one 503 a second per address; the rest of the flood is dropped."""
        if now - self._told.get(address, -1e9) >= 1.0:
            self._told[address] = now
            return True
        return False

    def purge(self, now: float) -> None:
        """Forget addresses whose buckets are full again (they are like new ones)."""
        full = self.burst / self.rate if self.rate > 0 else 0.0
        self._buckets = {a: (t, at) for a, (t, at) in self._buckets.items() if now - at < full}
        self._told = {a: t for a, t in self._told.items() if now - t < 1.0}

"""Token buckets: per-user limits (sends, control frames) and the arithmetic they share.

Per node and in memory: a user spread over several nodes gets a bucket on each,
which bounds abuse without a round trip to the database on every frame.
"""

from __future__ import annotations

import trio

#: Buckets idle this long are full again and are forgotten.
_FORGET_AFTER_S = 600.0


def take_token(tokens: float, stamp: float, now: float, rate: float, burst: float) -> tuple[float, float]:
    """Refill a bucket holding ``tokens`` at ``stamp`` up to ``now`` and take one.

    Returns ``(tokens left, wait)``: ``wait`` is 0.0 when the token was taken, else
    the seconds until one is available (and nothing was taken).
    """
    tokens = min(burst, tokens + (now - stamp) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}
        self._last_sweep = 0.0

    def take(self, key: int) -> float:
        """Take one token; returns 0.0 when allowed, else seconds until one is available."""
        now = trio.current_time()
        self._sweep(now)
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens, wait = take_token(tokens, stamp, now, self.rate, self.burst)
        self._buckets[key] = (tokens, now)
        return wait

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _FORGET_AFTER_S:
            return
        self._last_sweep = now
        stale = [k for k, (_, stamp) in self._buckets.items() if now - stamp > _FORGET_AFTER_S]
        for key in stale:
            del self._buckets[key]

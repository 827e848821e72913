"""Token buckets: per-user limits and the arithmetic they share.

For sends (``limits.send_rate_per_s`` / ``send_burst``), channel operations and
the users they put into channels (``limits.channel_*``), and control frames.
Per node and in memory: a user spread over several nodes gets a bucket on each,
which bounds abuse without a round trip to the database on every frame.
"""

from __future__ import annotations

import trio

#: Buckets idle this long are full again and are forgotten.
_FORGET_AFTER_S = 600.0


def take_token(
    tokens: float, stamp: float, now: float, rate: float, burst: float, cost: float = 1.0
) -> tuple[float, float]:
    """Refill a bucket holding ``tokens`` at ``stamp`` up to ``now`` and take ``cost``.

    Returns ``(tokens left, wait)``: ``wait`` is 0.0 when the tokens were taken,
    else the seconds until they are available (and nothing was taken).
    """
    tokens = min(burst, tokens + (now - stamp) * rate)
    if tokens >= cost:
        return tokens - cost, 0.0
    return tokens, (cost - tokens) / rate


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}
        self._last_sweep = 0.0

    def take(self, key: int, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; returns 0.0 when allowed, else seconds until they are available.

        A cost above the bucket's size counts as a full bucket, so that one
        large request (a big group) is possible at all, once the bucket is full.
        """
        cost = min(float(cost), self.burst)
        now = trio.current_time()
        self._sweep(now)
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens, wait = take_token(tokens, stamp, now, self.rate, self.burst, cost)
        self._buckets[key] = (tokens, now)
        return wait

    def give_back(self, key: int, cost: float = 1.0) -> None:
        """Return tokens taken for work that turned out not to be done."""
        if key in self._buckets:
            tokens, stamp = self._buckets[key]
            self._buckets[key] = (min(self.burst, tokens + min(float(cost), self.burst)), stamp)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _FORGET_AFTER_S:
            return
        self._last_sweep = now
        stale = [k for k, (_, stamp) in self._buckets.items() if now - stamp > _FORGET_AFTER_S]
        for key in stale:
            del self._buckets[key]

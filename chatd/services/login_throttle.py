"""Failed logins per username and per client address, in a sliding minute.

Password guessing is throttled before any argon2 work: once a key (a
username, or a client address) has ``security.login_attempts_per_min``
failures within the last minute, further logins on that key are refused with
``rate_limited`` until the oldest failure leaves the window. Per node and in
memory, like the send buckets: a node that restarts forgets, and a guesser
spread over N nodes gets N times the budget, which still bounds guessing to a
few hundred passwords an hour per user.

Memory is bounded: a key holds at most ``per_min`` timestamps, keys with no
failure in the window are swept, and new keys past ``max_keys`` push out the
oldest ones (failures themselves are rate-bounded by the argon2 slots, so the
cap is a backstop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import trio

WINDOW_S = 60.0
MAX_KEYS = 100_000

Key = tuple[str, str]
"""("user", lower-cased username) or ("addr", client address)."""


class LoginThrottle:
    def __init__(self, per_min: int, *, window_s: float = WINDOW_S, max_keys: int = MAX_KEYS) -> None:
        self.per_min = per_min
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[Key, deque[float]] = {}
        self._last_sweep = 0.0

    def retry_after(self, keys: Iterable[Key]) -> float:
        """0.0 when a login may be tried now, else seconds until one of these keys allows it."""
        now = trio.current_time()
        wait = 0.0
        for key in keys:
            stamps = self._failures.get(key)
            if stamps is not None and len(stamps) >= self.per_min:
                wait = max(wait, stamps[0] + self.window_s - now)
        return wait

    def failed(self, keys: Iterable[Key]) -> None:
        """Count one failed login against each key."""
        now = trio.current_time()
        self._sweep(now)
        for key in keys:
            stamps = self._failures.get(key)
            if stamps is None:
                if len(self._failures) >= self.max_keys:
                    del self._failures[next(iter(self._failures))]
                stamps = self._failures[key] = deque(maxlen=self.per_min)
            stamps.append(now)

    def __len__(self) -> int:
        return len(self._failures)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.window_s and len(self._failures) < self.max_keys:
            return
        self._last_sweep = now
        stale = [k for k, stamps in self._failures.items() if stamps[-1] <= now - self.window_s]
        for key in stale:
            del self._failures[key]

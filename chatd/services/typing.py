"""Typing (PROTOCOL §3): live only, never persisted, to the channel's other online members.

A ``typing`` frame is checked (the sender must be a member: ``not_member``
otherwise), rate-limited per connection and channel (one forwarded per
``INTERVAL_S``; the rest are dropped quietly: a client repeats typing every
few seconds while the user types, so nothing is lost but repeats), and handed
to the live bus, which publishes it to every node with the node's other live
news (chatd.services.livebus). Each node pushes ``{"type": "typing",
"channel_id", "user_id"}`` to its connected members of the channel, except
the typist's own connections.

Large channels: above ``MAX_MEMBERS`` members typing is not forwarded at all
(dropped quietly): "someone is typing" in a crowd is noise, and it would cost
a frame per typist per online member.

Membership answers are cached briefly (``MEMBER_CACHE_S``) so a client that
types in a channel costs a query every few seconds, not per frame.
"""

from __future__ import annotations

import trio

from chatd.db.receipts import ReceiptStore
from chatd.errors import NotMember
from chatd.models import Principal
from chatd.services.livebus import LiveBus

#: At most one typing frame forwarded per connection and channel in this many seconds.
INTERVAL_S = 2.0
#: Channels with more members get no typing notifications.
MAX_MEMBERS = 100
MEMBER_CACHE_S = 10.0
#: Cached membership answers, at most (the cache is emptied when full).
MEMBER_CACHE_MAX = 50_000
#: Channels remembered per connection for the rate limit (forgotten when full).
GATE_MAX = 64


class TypingGate:
    """One connection's rate limit: when it last forwarded typing in each channel."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def admit(self, channel_id: int, now: float) -> bool:
        last = self.last.get(channel_id)
        if last is not None and now - last < INTERVAL_S:
            return False
        if len(self.last) >= GATE_MAX:
            self.last.clear()
        self.last[channel_id] = now
        return True


class TypingService:
    def __init__(self, store: ReceiptStore, bus: LiveBus) -> None:
        self.store = store
        self.bus = bus
        self._members: dict[tuple[int, int], tuple[int | None, float]] = {}
        #: Typing frames forwarded to the bus (for the benchmark).
        self.forwarded = 0

    async def _member_count(self, user_id: int, channel_id: int, now: float) -> int | None:
        key = (user_id, channel_id)
        cached = self._members.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        count = await self.store.member_count(channel_id, user_id)
        if len(self._members) >= MEMBER_CACHE_MAX:
            self._members.clear()
        self._members[key] = (count, now + MEMBER_CACHE_S)
        return count

    async def typed(self, principal: Principal, channel_id: int, gate: TypingGate) -> None:
        """Forward (or quietly drop) one typing frame; NotMember for a non-member."""
        now = trio.current_time()
        count = await self._member_count(principal.user_id, channel_id, now)
        if count is None:
            raise NotMember("not a member of this channel")
        if count > MAX_MEMBERS or not gate.admit(channel_id, now):
            return
        self.forwarded += 1
        self.bus.typing(channel_id, principal.user_id)

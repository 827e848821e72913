"""Reading a user's inbox from a cursor, now or when it advances.

Live delivery and catch-up are the same code: take the user's signal, read
from the cursor, and when nothing is left, wait for the signal and read again.
"""

from __future__ import annotations

import trio

from chatd.db.inbox import InboxStore
from chatd.hub import Hub
from chatd.models import InboxEvent

#: Events per read: large enough to catch up fast, small enough to bound memory.
PAGE = 100


class InboxService:
    def __init__(self, inbox: InboxStore, hub: Hub) -> None:
        self.inbox = inbox
        self.hub = hub

    async def read(self, user_id: int, after: int, limit: int = PAGE) -> list[InboxEvent]:
        return await self.inbox.read(user_id, after, limit)

    async def head(self, user_id: int) -> int:
        """The user's newest ``inbox_seq`` (0 for an empty inbox)."""
        return await self.inbox.head(user_id)

    async def long_poll(self, user_id: int, after: int, limit: int, timeout_s: float) -> list[InboxEvent]:
        """Events after ``after``; if none, wait up to ``timeout_s`` for some (or a drain)."""
        with self.hub.watch(user_id) as signal:
            wake = signal.event
            events = await self.read(user_id, after, limit)
            if events or timeout_s <= 0:
                return events
            with trio.move_on_after(timeout_s):
                while not self.hub.draining.is_set():
                    await wake.wait()
                    wake = signal.event
                    events = await self.read(user_id, after, limit)
                    if events:
                        return events
        return []

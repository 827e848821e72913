"""Reading a user's inbox from a cursor, now or when it advances.

Live delivery and catch-up are the same code: take the user's signal, read
from the cursor, and when nothing is left, wait for the signal and read again.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs
import trio

from chatd.db.inbox import InboxStore
from chatd.hub import Hub
from chatd.models import InboxEvent

#: Events per read: large enough to catch up fast, small enough to bound memory.
PAGE = 100


#: Requests answered by one batched read at most (each up to PAGE events).
BATCH = 64


@attrs.define(eq=False)
class _Read:
    user_id: int
    after: int
    limit: int
    done: trio.Event = attrs.field(factory=trio.Event)
    events: list[InboxEvent] | None = None
    error: Exception | None = None


class InboxService:
    """Inbox reads for sessions, long-polls and HTTP sync.

    While :meth:`run` runs (``chatd serve``), reads go through ``readers``
    tasks that each answer up to BATCH waiting requests with one statement
    (:meth:`chatd.db.inbox.InboxStore.read_many`): catch-up reads have bounded
    concurrency, so a reconnect storm leaves database connections for the
    handshakes' token checks, and many users behind on the same node cost one
    read. Without it (tools, tests) each read is its own statement.
    """

    def __init__(self, inbox: InboxStore, hub: Hub, *, readers: int = 4) -> None:
        self.inbox = inbox
        self.hub = hub
        self.readers = readers
        self._running = False
        self._pending: list[_Read] = []
        self._wanted = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The batched readers, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.readers):
                    nursery.start_soon(self._reader)
                self._running = True
                task_status.started()
        finally:
            self._running = False

    async def _reader(self) -> None:
        while True:
            if not self._pending:
                if self._wanted.is_set():
                    self._wanted = trio.Event()
                await self._wanted.wait()
                continue
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            try:
                results = await self.inbox.read_many([(r.user_id, r.after, r.limit) for r in batch])
            except Exception as exc:  # each requester raises it in its own task (Unavailable...)
                for r in batch:
                    r.error = exc
            else:
                for r, events in zip(batch, results):
                    r.events = events
            for r in batch:
                r.done.set()

    async def read(self, user_id: int, after: int, limit: int = PAGE) -> list[InboxEvent]:
        if not self._running:
            return await self.inbox.read(user_id, after, limit)
        request = _Read(user_id, after, limit)
        self._pending.append(request)
        self._wanted.set()
        await request.done.wait()
        if request.error is not None:
            # A copy per requester: one exception object raised in many tasks would share a traceback.
            raise copy.copy(request.error) from request.error
        assert request.events is not None
        return request.events

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

"""The node's in-process registry: who is connected, and "your inbox advanced".

A wake-up carries only a position (Synapse's notifier): the user's newest
known ``inbox_seq``. Sessions and long-polls re-read the inbox from their own
cursor, so a lost or merged wake-up costs latency, never an event. The hub
holds no data that PostgreSQL does not also hold.

Wake-ups come from two places: the transaction results of writes made on
this node (fast path) and the cluster's NOTIFY hints (every node, including
this one; duplicates are harmless).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import trio

from chatd.hints import DeviceRevoked, InboxHeads, UserRevoked, WakeAll
from chatd.models import InboxAdvance, InboxEvent, Message
from chatd.wire.outbound import ServerFrame

log = logging.getLogger(__name__)


#: Recent events kept per watched user, so live delivery of this node's own
#: writes needs no database read. Bounded: older ones are re-read if needed.
RECENT_EVENTS = 64
#: (head, time) of the latest advances per watched user, for the inbox backlog gauge.
ADVANCE_STAMPS = 16


class LiveSink(Protocol):
    """A connection that follows a user's inbox live and takes its events straight from the hub."""

    def live_event(self, event: InboxEvent | None) -> None:
        """``event`` was just committed on this node, or (None) the inbox may have advanced."""
        ...


class InboxSignal:
    """Per-user signal: the newest head this node has heard of, and an event to wait on.

    Waiters take :attr:`event` *before* reading the inbox and wait on it after;
    an advance in between has already set it, so no wake-up falls in the gap.
    It also keeps the last few events this node committed for the user
    (:meth:`events_after`), the fast path of live delivery, and the
    connections caught up and parked (:attr:`sinks`), which are handed each
    event as it is published instead of being woken to fetch it: no task
    switch, no queue, per recipient (chatd.ws.session).
    """

    __slots__ = ("head", "_event", "users", "recent", "stamps", "sinks")

    def __init__(self) -> None:
        self.head = 0
        self._event: trio.Event | None = None
        self.users = 0
        self.recent: dict[int, InboxEvent] = {}
        #: When this node heard of each recent head: ``chatd_inbox_backlog_seconds``. Made at
        #: the first advance: an empty deque is ~600 bytes, and most users' signals are idle.
        self.stamps: deque[tuple[int, float]] | tuple[()] = ()
        self.sinks: set[LiveSink] = set()

    @property
    def event(self) -> trio.Event:
        """Set at the next advance. Made when first asked for: most advances have no waiter."""
        if self._event is None:
            self._event = trio.Event()
        return self._event

    def remember(self, event: InboxEvent) -> None:
        self.recent[event.inbox_seq] = event
        if len(self.recent) > RECENT_EVENTS:
            # The first inserted: the oldest (events arrive nearly in order), in O(1).
            del self.recent[next(iter(self.recent))]

    def events_after(self, cursor: int) -> list[InboxEvent] | None:
        """Events cursor+1..head from memory, or None when any of them is not here."""
        if self.head <= cursor:
            return None
        found = []
        for inbox_seq in range(cursor + 1, self.head + 1):
            event = self.recent.get(inbox_seq)
            if event is None:
                return None
            found.append(event)
        return found

    def heard_after(self, cursor: int) -> float:
        """When this node first heard of an event after ``cursor`` (the oldest stamp kept,
        when that one is older than what is remembered)."""
        for head, stamp in self.stamps:
            if head > cursor:
                return stamp
        return self.stamps[0][1] if self.stamps else time.monotonic()

    def fire(self, head: int | None, event: InboxEvent | None = None) -> None:
        """The inbox advanced to ``head`` (None: may have, re-read); ``event`` is its newest, when in hand."""
        if head is not None:
            if head <= self.head:
                return
            self.head = head
            if not self.stamps:
                self.stamps = deque(maxlen=ADVANCE_STAMPS)
            self.stamps.append((head, time.monotonic()))  # not trio's clock: fired from sync code too
        if self._event is not None:
            self._event.set()
            self._event = None
        if self.sinks:
            for sink in list(self.sinks):
                sink.live_event(event)


class Drainable(Protocol):
    """What the hub needs of a connection: to be told to drain, or to close."""

    user_id: int
    device_id: int
    #: The last inbox_seq queued to the client while it follows its inbox; None before ``sync``.
    @property
    def delivered(self) -> int | None: ...

    #: ``trio.current_time()`` of the last frame the client sent (the idle sweep reads it).
    last_frame_at: float

    def drain(self, after_ms: int) -> None: ...

    def close_idle(self) -> None: ...

    def revoke(self) -> None: ...

    def push_message(self, message: Message) -> None: ...

    def offer(self, frame: ServerFrame) -> None: ...
    def push_change(self, kind: str, fields: dict[str, Any]) -> None: ...


class Hub:
    """This node's registry of connected sessions and per-user inbox signals.

    One per node, owned by the composition root and shared by the writer
    (which publishes committed events), the LISTEN task (which applies other
    nodes' hints) and every session (which subscribes while it delivers).
    It is synchronous: nothing here waits, so no caller is ever slowed by
    another connection.
    """

    def __init__(self) -> None:
        self._signals: dict[int, InboxSignal] = {}
        self._sessions: dict[int, set[Drainable]] = {}
        self.draining = trio.Event()
        #: The ``after_ms`` of this node's drain (for connections accepted as it began).
        self.drain_after_ms = 0

    def subscribe(self, user_id: int) -> InboxSignal:
        """The user's signal, kept while anyone on this node holds a subscription.

        Paired with :meth:`unsubscribe` in a ``finally`` (plain calls rather than a
        context manager: a suspended generator per connection costs ~1 KiB).
        """
        signal = self._signals.get(user_id)
        if signal is None:
            signal = self._signals[user_id] = InboxSignal()
        signal.users += 1
        return signal

    def unsubscribe(self, user_id: int) -> None:
        signal = self._signals[user_id]
        signal.users -= 1
        if signal.users == 0:
            del self._signals[user_id]

    @contextmanager
    def watch(self, user_id: int) -> Iterator[InboxSignal]:
        """:meth:`subscribe` as a context manager, for short-lived watchers (long-polls)."""
        signal = self.subscribe(user_id)
        try:
            yield signal
        finally:
            self.unsubscribe(user_id)

    def advance(self, advances: Iterable[InboxAdvance]) -> None:
        for adv in advances:
            signal = self._signals.get(adv.user_id)
            if signal is not None:
                signal.fire(adv.head)

    def publish(self, events: Iterable[tuple[int, InboxEvent]]) -> None:
        """Events this node just committed, per user: remembered, then the users woken."""
        for user_id, event in events:
            signal = self._signals.get(user_id)
            if signal is not None:
                signal.remember(event)
                signal.fire(event.inbox_seq, event)

    def wake_all(self) -> None:
        """Every watcher re-reads from its cursor (after a lost LISTEN connection, a coarse hint)."""
        for signal in self._signals.values():
            signal.fire(None)

    def apply(self, hint: InboxHeads | WakeAll | DeviceRevoked | UserRevoked, *, from_this_node: bool) -> None:
        """Act on a cluster hint (chatd.hints) that concerns this node's connections.

        A group-commit batch's hints (``from_batch``) are skipped by the node that
        ran it: it published the batch's events itself (:meth:`publish`, right
        after the commit), and its own hint, often arriving first, would only
        send its sessions to the database for events on their way to memory.
        """
        if isinstance(hint, DeviceRevoked):
            self.revoke_device(hint.device_id)
        elif isinstance(hint, UserRevoked):
            self.revoke_user(hint.user_id)
        elif hint.from_batch and from_this_node:
            return
        elif isinstance(hint, WakeAll):
            self.wake_all()
        else:
            self.advance(hint.advances)

    # --- connections -----------------------------------------------------------------

    def add_session(self, session: Drainable) -> None:
        """Register a local connection; paired with :meth:`remove_session` in a ``finally``."""
        self._sessions.setdefault(session.user_id, set()).add(session)

    def remove_session(self, session: Drainable) -> None:
        sessions = self._sessions.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._sessions[session.user_id]

    def _all_sessions(self) -> list[Drainable]:
        return [s for sessions in self._sessions.values() for s in sessions]

    def connection_counts(self) -> dict[int, int]:
        """Local connections per user (for the node registry)."""
        return {user_id: len(sessions) for user_id, sessions in self._sessions.items()}

    def backlog_seconds(self) -> float:
        """Age of the oldest event this node knows of that a connection following its inbox
        has not yet been handed (0 when every such connection is caught up).

        Walks every local connection: meant for a scrape, not for a hot path.
        """
        now = time.monotonic()
        oldest = now
        for user_id, sessions in self._sessions.items():
            signal = self._signals.get(user_id)
            if signal is None or not signal.stamps:  # nothing arrived since it subscribed
                continue
            for session in sessions:
                delivered = session.delivered
                if delivered is not None and delivered < signal.head:
                    oldest = min(oldest, signal.heard_after(delivered))
        return now - oldest

    def connected_users(self) -> list[int]:
        return list(self._sessions)

    def push_live(self, user_ids: Iterable[int], message: Message) -> None:
        """A large channel's message, live and not persisted, to every local connection of these users."""
        for user_id in user_ids:
            for session in list(self._sessions.get(user_id, ())):
                session.push_message(message)

    def push_frame(self, user_ids: Iterable[int], frame: ServerFrame) -> None:
        """A live frame (typing, receipt_update) to every local connection of these users."""
        for user_id in user_ids:
            for session in list(self._sessions.get(user_id, ())):
                session.offer(frame)

    def push_change(self, user_ids: Iterable[int], kind: str, fields: dict[str, Any]) -> None:
        """A change to a large channel's message (edit, delete, reaction), live, to these users' connections."""
        for user_id in user_ids:
            for session in list(self._sessions.get(user_id, ())):
                session.push_change(kind, fields)

    def revoke_device(self, device_id: int) -> None:
        for session in self._all_sessions():
            if session.device_id == device_id:
                session.revoke()

    def revoke_user(self, user_id: int) -> None:
        for session in list(self._sessions.get(user_id, ())):
            session.revoke()

    def connection_count(self) -> int:
        return sum(len(sessions) for sessions in self._sessions.values())

    def close_idle(self, silent_since: float) -> int:
        """Close every local connection whose client sent nothing since ``silent_since``; how many.

        One pass over the connections (:func:`chatd.ws.heartbeat.sweep_idle` runs it
        every half heartbeat) instead of a timer per connection: a deadline per
        connection, moved on every frame, costs Trio's deadline heap work that
        grows with the number of connections.
        """
        idle = [s for sessions in self._sessions.values() for s in sessions if s.last_frame_at < silent_since]
        for session in idle:
            session.close_idle()
        return len(idle)

    def drain(self, spread_ms: int) -> None:
        """Tell every connection to go elsewhere, spread over ``spread_ms``, and wake long-polls."""
        self.drain_after_ms = spread_ms
        self.draining.set()
        for session in self._all_sessions():
            session.drain(spread_ms)
        self.wake_all()

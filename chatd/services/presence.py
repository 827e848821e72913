"""Presence (PROTOCOL §6): who is online, kept in memory per node, told only to subscribers.

A user is online while any of its connections, on any node, sent a frame
within ``presence.timeout_s``; ``last_seen`` is the time of its last frame.

- This node: every frame of a connection calls :meth:`PresenceService.seen`
  (a dict write; nothing else unless the user was not online here). A sweep
  (``SWEEP_S``) turns users silent for the timeout offline. A closed
  connection is not a frame: its user stays online until the timeout after
  its last frame, which also damps reconnect flaps.
- Other nodes: each transition of a user on a node (online here / offline
  here) goes out through the live bus (chatd.services.livebus, batched, at
  most every few tens of ms) and every other node keeps, per user, the nodes
  that hold it online. A user's status changes when the first node holds it
  or the last one lets it go, and only then are subscribers told.
- A node that dies without saying so (SIGKILL): every ``BEAT_S`` each node
  reads the registry's live nodes (chatd.services.cluster); users held only
  by a node silent for the registry expiry (or restarted since) go offline
  here, subscribers told: within the registry expiry + ``BEAT_S``, inside
  ``presence.timeout_s`` + the registry expiry.
- A starting node begins from ``node_users`` (users connected elsewhere count
  as online) and follows the hints from then on.
- ``last_seen`` is persisted lazily (``user_presence``): when a user goes
  offline here and every ``SAVE_EVERY_S`` while online, in one statement
  per beat; never per frame.

No broadcast: a change goes only to the connections that subscribed to the
user (``presence_subscribe``, at most 500 ids each).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Protocol

import trio

from chatd import hints
from chatd.db.presence import PresenceStore
from chatd.errors import Unavailable
from chatd.models import PresenceState
from chatd.services.cluster import EXPIRY_S as NODE_EXPIRY_S
from chatd.services.livebus import LiveBus
from chatd.wire.outbound import PresenceFrame, ServerFrame

log = logging.getLogger(__name__)

#: How often this node reconciles with the registry and saves last_seen.
BEAT_S = 5.0
#: How often a user online here has its last_seen saved.
SAVE_EVERY_S = 120.0
#: Offline users whose last_seen is remembered in memory; past it the table answers.
SEEN_MAX = 100_000


class Watcher(Protocol):
    def offer(self, frame: ServerFrame) -> None: ...


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


class PresenceService:
    def __init__(self, store: PresenceStore, bus: LiveBus, node: str, *, timeout_s: float) -> None:
        self.store = store
        self.bus = bus
        self.node = node
        self.timeout_s = timeout_s
        #: Users online on this node and the wall time of their last frame here.
        self._last: dict[int, float] = {}
        #: Users online on other nodes: node -> (announced last_seen, when we learned it), wall times.
        self._remote: dict[int, dict[str, tuple[float, float]]] = {}
        #: last_seen of users not online (learned at runtime or read from the table).
        self._seen_off: dict[int, float] = {}
        self._unsaved: dict[int, float] = {}
        self._saved_at: dict[int, float] = {}
        self._watchers: dict[int, set[Watcher]] = {}
        self._watching: dict[Watcher, tuple[int, ...]] = {}
        #: Status changes told to subscribers (for tests and metrics).
        self.transitions = 0

    # --- this node's connections ----------------------------------------------------

    def seen(self, user_id: int) -> None:
        """A frame from one of the user's connections on this node."""
        now = time.time()
        was_here = user_id in self._last
        self._last[user_id] = now
        if was_here:
            return
        self.bus.presence(user_id, True, int(now * 1000))
        self._saved_at[user_id] = trio.current_time()
        if user_id not in self._remote:
            self._changed(user_id)

    def sweep(self) -> None:
        """Users silent here for the timeout go offline here (and everywhere, if no other node holds them)."""
        cutoff = time.time() - self.timeout_s
        for user_id in [u for u, last in self._last.items() if last < cutoff]:
            last = self._last.pop(user_id)
            self._saved_at.pop(user_id, None)
            self._remember_off(user_id, last)
            self._unsaved[user_id] = last
            self.bus.presence(user_id, False, int(last * 1000))
            if user_id not in self._remote:
                self._changed(user_id)

    # --- other nodes ------------------------------------------------------------------

    def hinted(self, hint: hints.Live) -> None:
        """Another node's presence transitions (this node's own are skipped)."""
        if hint.node == self.node:
            return
        now = time.time()
        for user_id, online, ms in hint.presence:
            before = self.is_online(user_id)
            if online:
                self._remote.setdefault(user_id, {})[hint.node] = (ms / 1000, now)
            else:
                self._drop_remote(user_id, hint.node, ms / 1000)
            if self.is_online(user_id) != before:
                self._changed(user_id)

    def _drop_remote(self, user_id: int, node: str, last: float | None) -> None:
        nodes = self._remote.get(user_id)
        if nodes is None or node not in nodes:
            return
        announced, _ = nodes.pop(node)
        if not nodes:
            del self._remote[user_id]
        self._remember_off(user_id, last if last is not None else announced)

    def reconcile(self, live: Mapping[str, datetime]) -> None:
        """Drop what dead nodes held: a node missing from the registry's live nodes
        (silent for the expiry), or restarted since we learned of it."""
        for user_id, nodes in list(self._remote.items()):
            for node, (announced, learned) in list(nodes.items()):
                started = live.get(node)
                if started is None or learned < started.timestamp():
                    before = self.is_online(user_id)
                    self._drop_remote(user_id, node, announced)
                    if self.is_online(user_id) != before:
                        self._changed(user_id)

    def adopt(self, held: Iterable[tuple[str, int]]) -> None:
        """A starting node's snapshot: users connected to other nodes count as online."""
        wall = time.time()
        for node, user_id in held:
            if node != self.node:
                self._remote.setdefault(user_id, {}).setdefault(node, (wall, wall))

    # --- reading and subscribing ------------------------------------------------------

    def is_online(self, user_id: int) -> bool:
        return user_id in self._last or user_id in self._remote

    def state(self, user_id: int) -> PresenceState:
        """From memory (after :meth:`load` for users this node knows nothing of)."""
        times = [t for t, _ in self._remote.get(user_id, {}).values()]
        if user_id in self._last:
            times.append(self._last[user_id])
        if times:
            return PresenceState(user_id, True, _at(max(times)))
        return PresenceState(user_id, False, _at(self._seen_off.get(user_id)))

    async def load(self, user_ids: Sequence[int]) -> None:
        """Read the persisted last_seen of offline users this node has none for."""
        unknown = [u for u in user_ids if not self.is_online(u) and u not in self._seen_off]
        if not unknown:
            return
        for user_id, moment in (await self.store.load(unknown)).items():
            self._remember_off(user_id, moment.timestamp())

    async def states(self, user_ids: Sequence[int]) -> list[PresenceState]:
        await self.load(user_ids)
        return [self.state(u) for u in user_ids]

    def watch(self, watcher: Watcher, user_ids: Sequence[int]) -> None:
        """Replace the watcher's list: from now on it is told of these users' changes."""
        self.unwatch(watcher)
        self._watching[watcher] = tuple(user_ids)
        for user_id in user_ids:
            self._watchers.setdefault(user_id, set()).add(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        for user_id in self._watching.pop(watcher, ()):
            watchers = self._watchers.get(user_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[user_id]

    def _changed(self, user_id: int) -> None:
        self.transitions += 1
        watchers = self._watchers.get(user_id)
        if not watchers:
            return
        frame = PresenceFrame(self.state(user_id))
        for watcher in list(watchers):
            watcher.offer(frame)

    def _remember_off(self, user_id: int, last: float) -> None:
        if len(self._seen_off) >= SEEN_MAX and user_id not in self._seen_off:
            self._seen_off.clear()
        self._seen_off[user_id] = max(last, self._seen_off.get(user_id, 0.0))

    # --- the background task ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``min(1, timeout/4)`` s; reconcile and save every ``BEAT_S``."""
        try:
            self.adopt(await self.store.node_users())
        except Unavailable as exc:
            log.warning("presence starts without the registry's snapshot: %s", exc)
        task_status.started()
        sweep_s = min(1.0, self.timeout_s / 4)
        next_beat = trio.current_time() + BEAT_S
        try:
            while True:
                await trio.sleep(sweep_s)
                self.sweep()
                if trio.current_time() >= next_beat:
                    next_beat = trio.current_time() + BEAT_S
                    await self._beat()
        finally:
            # Going away: what this node held is saved (bounded; the others learn from the registry).
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                self._unsaved.update(self._last)
                try:
                    await self.store.save({u: _at_utc(t) for u, t in self._unsaved.items()})
                except Unavailable:
                    pass

    async def _beat(self) -> None:
        try:
            self.reconcile(await self.store.live_nodes(NODE_EXPIRY_S))
        except Unavailable as exc:
            log.warning("presence reconcile skipped: %s", exc)
        now = trio.current_time()
        for user_id, last in self._last.items():
            if now - self._saved_at.get(user_id, now) >= SAVE_EVERY_S:
                self._unsaved[user_id] = last
                self._saved_at[user_id] = now
        if not self._unsaved:
            return
        batch, self._unsaved = self._unsaved, {}
        try:
            await self.store.save({u: _at_utc(t) for u, t in batch.items()})
        except Unavailable as exc:
            log.warning("last_seen of %d users not saved: %s", len(batch), exc)


def _at_utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)

"""Live news between nodes: typing, presence transitions, large channels' receipt updates.

None of it is a write. Producers on this node add items synchronously (never
waiting); one task publishes what gathered as one :class:`chatd.hints.Live`
hint (split only to stay under the payload limit), in one commit, at most
every ``FLUSH_S``. So a busy node costs the cluster ~40 NOTIFY commits per
second at most, never one per frame (PostgreSQL serialises commits that
notify: shared/DESIGN.md, Cluster).

Every node, this one included, acts on the hint when it arrives
(:class:`LiveDelivery`): one path for local and remote recipients.

Bounds: at most ``MAX_ITEMS`` items wait for a flush; past it new typing and
receipt items are dropped (live news, nothing durable is lost: receipts stay
queryable) and presence keeps only the newest state per user.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import trio

from chatd import hints
from chatd.db.livehints import LiveHintStore
from chatd.errors import Unavailable
from chatd.hub import Hub
from chatd.wire.outbound import ReceiptUpdate, TypingNotice

log = logging.getLogger(__name__)

#: The most often this node publishes live news.
FLUSH_S = 0.025
#: Items waiting for the next flush, at most (per kind).
MAX_ITEMS = 20_000
#: Live hints received and waiting for their members lookup; past it, dropped.
DELIVERY_QUEUE = 256


class LiveBus:
    """Gathers this node's live news and publishes it in batches."""

    def __init__(self, store: LiveHintStore, node: str, *, flush_s: float = FLUSH_S) -> None:
        self.store = store
        self.node = node
        self.flush_s = flush_s
        self._typing: set[tuple[int, int]] = set()
        self._presence: dict[int, tuple[bool, int]] = {}
        self._receipts: dict[tuple[int, int, str], int] = {}
        self._wanted = trio.Event()
        #: Published NOTIFY payloads and flush commits, for the benchmarks and metrics.
        self.notifies = 0
        self.flushes = 0

    def typing(self, channel_id: int, user_id: int) -> None:
        if len(self._typing) < MAX_ITEMS:
            self._typing.add((channel_id, user_id))
            self._wanted.set()

    def presence(self, user_id: int, online: bool, last_seen_ms: int) -> None:
        if user_id in self._presence or len(self._presence) < MAX_ITEMS:
            self._presence[user_id] = (online, last_seen_ms)
            self._wanted.set()

    def receipt(self, channel_id: int, user_id: int, state: str, seq: int) -> None:
        key = (channel_id, user_id, state)
        if key in self._receipts:
            self._receipts[key] = max(seq, self._receipts[key])
        elif len(self._receipts) < MAX_ITEMS:
            self._receipts[key] = seq
        else:
            return
        self._wanted.set()

    def _take(self) -> hints.Live:
        hint = hints.Live(
            self.node,
            tuple(sorted(self._typing)),
            tuple((u, on, ms) for u, (on, ms) in self._presence.items()),
            tuple((c, u, s, seq) for (c, u, s), seq in self._receipts.items()),
        )
        self._typing, self._presence, self._receipts = set(), {}, {}
        self._wanted = trio.Event()
        return hint

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wanted.wait()
            started = trio.current_time()
            await self.flush()
            # At most one flush per flush_s: what arrives meanwhile waits and shares the next.
            await trio.sleep_until(started + self.flush_s)

    async def flush(self) -> None:
        payloads = hints.encode_live(self._take())
        if not payloads:
            return
        try:
            await self.store.publish(payloads)
        except Unavailable as exc:
            log.warning("live hints dropped (%d payloads): %s", len(payloads), exc)
            return
        self.flushes += 1
        self.notifies += len(payloads)


class LiveDelivery:
    """Acts on every node's live hints: typing and receipt updates to this node's
    connected members of the channel, presence to the presence service."""

    def __init__(self, store: LiveHintStore, hub: Hub, on_presence: Callable[[hints.Live], None]) -> None:
        self.store = store
        self.hub = hub
        self.on_presence = on_presence
        self._in, self._out = trio.open_memory_channel[hints.Live](DELIVERY_QUEUE)

    def received(self, hint: hints.Live) -> None:
        """From the LISTEN callback: never waits."""
        if hint.presence:
            self.on_presence(hint)
        if not hint.typing and not hint.receipts:
            return
        try:
            self._in.send_nowait(hint)
        except trio.WouldBlock:
            log.warning("live delivery queue full; a live hint from %s dropped", hint.node)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for hint in self._out:
            try:
                await self._deliver(hint)
            except Unavailable as exc:
                log.warning("live hint from %s not delivered: %s", hint.node, exc)

    async def _deliver(self, hint: hints.Live) -> None:
        online = self.hub.connected_users()
        if not online:
            return
        by_channel: dict[int, list[tuple[int, TypingNotice | ReceiptUpdate]]] = defaultdict(list)
        for channel_id, user_id in hint.typing:
            by_channel[channel_id].append((user_id, TypingNotice(channel_id, user_id)))
        for channel_id, user_id, state, seq in hint.receipts:
            by_channel[channel_id].append((user_id, ReceiptUpdate(channel_id, user_id, state, seq)))
        members_of = await self.store.members_among(sorted(by_channel), online)
        for channel_id, frames in by_channel.items():
            members = members_of.get(channel_id, [])
            for author, frame in frames:
                # Typing never goes to the typist's own connections; receipt updates do (its other devices).
                skip = author if isinstance(frame, TypingNotice) else None
                self.hub.push_frame((m for m in members if m != skip), frame)

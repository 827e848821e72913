"""What a node does for the cluster: its registry heartbeat, and live fan-out of large channels.

Nodes share PostgreSQL and nothing else. Each node keeps its row in
``nodes`` fresh (a heartbeat every ``HEARTBEAT_S``) with the users connected to
it in ``node_users`` (only what changed since the last beat is written); any
node deletes nodes silent for ``EXPIRY_S``, and their users with them.

Large channels (more members than ``fanout.inbox_max_members``) have no inbox
rows: each node pushes a live ``{"type": "message", ...}`` frame to its own
connected members, for its own writes straight from the writer, for other
nodes' writes when their ``c:<channel>:<seq>`` hint arrives. Members who are
offline read the channel's history; a frame dropped here (queue full) is
likewise only latency, as history has the message.

Changes to a large channel's messages (edit, delete, reaction; PROTOCOL §10)
travel the same way: the ``x:`` hint (:class:`chatd.hints.MessageChanged`),
which every node, the writing one included, turns into a live
``{"type": "edit"|"delete"|"reaction", ...}`` frame for its connected members.
"""

from __future__ import annotations

import logging

import trio

from chatd.db.channels import ChannelStore
from chatd.db.messages import MessageStore
from chatd.db.nodes import NodeStore
from chatd.errors import Unavailable
from chatd.hints import MessageChanged
from chatd.hub import Hub
from chatd.models import Message

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
#: A node whose heartbeat is older than this is gone.
EXPIRY_S = 30.0
#: Large-channel messages waiting to be pushed live; past it they are dropped (history has them).
LIVE_QUEUE = 1024


class NodeRegistry:
    def __init__(self, nodes: NodeStore, hub: Hub, name: str, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.nodes = nodes
        self.hub = hub
        self.name = name
        self.heartbeat_s = heartbeat_s
        self._flushed: dict[int, int] = {}

    async def run(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, then beat until cancelled; on the way out, unregister (bounded)."""
        await self.nodes.register(self.name, url)
        task_status.started()
        try:
            while True:
                await trio.sleep(self.heartbeat_s)
                try:
                    await self.beat(url)
                except Unavailable as exc:
                    log.warning("heartbeat failed: %s", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self.nodes.unregister(self.name)
                except Unavailable:
                    pass

    async def beat(self, url: str) -> None:
        counts = self.hub.connection_counts()
        changed = {u: n for u, n in counts.items() if self._flushed.get(u) != n}
        changed.update({u: 0 for u in self._flushed if u not in counts})
        beat = await self.nodes.heartbeat(self.name, sum(counts.values()), changed, EXPIRY_S)
        if not beat.known:
            # Expired by the others (we were silent too long): announce ourselves afresh.
            log.warning("node %s had expired; registering again", self.name)
            await self.nodes.register(self.name, url)
            self._flushed = {}
            await self.beat(url)
            return
        self._flushed = counts
        if beat.expired:
            log.info("expired silent nodes: %s", ", ".join(beat.expired))


class LiveFanout:
    """Pushes large channels' messages to this node's connected members."""

    def __init__(self, channels: ChannelStore, messages: MessageStore, hub: Hub) -> None:
        self.channels = channels
        self.messages = messages
        self.hub = hub
        self._in, self._out = trio.open_memory_channel[tuple[int, int, Message | MessageChanged | None]](LIVE_QUEUE)

    def committed(self, message: Message) -> None:
        """A large channel's message this node just committed."""
        self._enqueue(message.channel_id, message.seq, message)

    def hinted(self, channel_id: int, seq: int) -> None:
        """Another node committed a large channel's message."""
        self._enqueue(channel_id, seq, None)

    def changed(self, change: MessageChanged) -> None:
        """Some node changed a large channel's message."""
        self._enqueue(change.channel_id, change.seq, change)

    def _enqueue(self, channel_id: int, seq: int, message: Message | MessageChanged | None) -> None:
        try:
            self._in.send_nowait((channel_id, seq, message))
        except trio.WouldBlock:
            log.warning("live fan-out queue full; channel %d seq %d left to history", channel_id, seq)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for channel_id, seq, message in self._out:
            try:
                await self._push(channel_id, seq, message)
            except Unavailable as exc:
                log.warning("live fan-out of channel %d skipped: %s", channel_id, exc)

    async def _push(self, channel_id: int, seq: int, message: Message | MessageChanged | None) -> None:
        online = self.hub.connected_users()
        if not online:
            return
        members = await self.channels.members_among(channel_id, online)
        if not members:
            return
        if isinstance(message, MessageChanged):
            await self._push_change(members, message)
            return
        if message is None:
            message = await self.messages.get(channel_id, seq)
            if message is None:
                return
        self.hub.push_live(members, message)

    async def _push_change(self, members: list[int], change: MessageChanged) -> None:
        fields: dict[str, object] = {"channel_id": change.channel_id, "seq": change.seq, **dict(change.fields)}
        if change.kind == "edit":
            current = await self.messages.get(change.channel_id, change.seq)
            if current is None:
                return
            fields = current.edit_json()
        self.hub.push_change(members, change.kind, fields)

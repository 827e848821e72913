"""A connection's receipts, typing and presence frames (PROTOCOL §3, §5, §6).

Kept out of chatd.ws.session so that module stays about the connection's
tasks: the session builds one :class:`ConnectionLive` per connection when the
node runs these services, calls :meth:`ConnectionLive.seen` for every frame
it reads (any frame is a heartbeat, so presence), hands it the ``receipt``,
``typing`` and ``presence_subscribe`` frames, and calls
:meth:`ConnectionLive.close` when the connection ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from chatd.errors import ChatdError
from chatd.models import Principal, ReceiptRequest
from chatd.services.presence import PresenceService, Watcher
from chatd.services.receipts import ReceiptWriter
from chatd.services.typing import TypingGate, TypingService
from chatd.wire.frames import PresenceSubscribeFrame, ReceiptFrame, TypingFrame
from chatd.wire.outbound import ErrorFrame, PresenceFrame, ServerFrame

LiveFrame = ReceiptFrame | TypingFrame | PresenceSubscribeFrame


@attrs.frozen
class LiveServices:
    """What the composition root hands every session for these frames."""

    receipts: ReceiptWriter
    typing: TypingService
    presence: PresenceService


class ConnectionLive:
    __slots__ = ("services", "principal", "watcher", "queue", "gate")

    def __init__(
        self,
        services: LiveServices,
        principal: Principal,
        watcher: Watcher,
        queue: Callable[[ServerFrame], Awaitable[None]],
    ) -> None:
        self.services = services
        self.principal = principal
        #: The session: it receives presence changes and refusals through ``offer``.
        self.watcher = watcher
        #: The session's own (waiting) queueing, for direct answers.
        self.queue = queue
        self.gate = TypingGate()

    def seen(self) -> None:
        self.services.presence.seen(self.principal.user_id)

    async def handle(self, frame: LiveFrame) -> None:
        if isinstance(frame, ReceiptFrame):
            await self._receipt(frame)
        elif isinstance(frame, TypingFrame):
            try:
                await self.services.typing.typed(self.principal, frame.channel_id, self.gate)
            except ChatdError as exc:
                await self.queue(ErrorFrame(exc.code, exc.message, frame.ref))
        else:
            await self._subscribe(frame)

    async def _receipt(self, frame: ReceiptFrame) -> None:
        ref = frame.ref

        def refused(exc: ChatdError) -> None:
            self.watcher.offer(ErrorFrame(exc.code, exc.message, ref))

        request = ReceiptRequest(self.principal.user_id, frame.channel_id, frame.state, frame.seq)
        await self.services.receipts.submit(request, refused)

    async def _subscribe(self, frame: PresenceSubscribeFrame) -> None:
        """Replace the watch list, then answer one ``presence`` per id, each read from
        memory as it is queued: a change pushed meanwhile is never older than its answer."""
        presence = self.services.presence
        await presence.load(frame.user_ids)
        presence.watch(self.watcher, frame.user_ids)
        for user_id in frame.user_ids:
            await self.queue(PresenceFrame(presence.state(user_id)))

    def close(self) -> None:
        self.services.presence.unwatch(self.watcher)

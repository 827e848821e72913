"""Group commit: the sends that arrive while a batch commits share the next transaction.

Sessions and HTTP handlers :meth:`SendWriter.submit` a send and wait for its
answer. A few writer tasks take whatever is queued (up to MAX_BATCH) and
commit it as one transaction with one round trip (``chatd_send_batch``), so
under load many sends share one fsync and one bridge crossing, and with no
load a send waits for nothing (no timer). Each send is answered only after
its batch committed.

Failure: the database unreachable answers ``unavailable`` to every send of
the batch (nothing stored; clients retry with the same client_msg_id). A
batch the database refuses as a whole is retried send by send, so one odd
send never fails the others.

Delivery: right after a commit the writer publishes each new message event
to the hub (the recipients' sessions on this node take it from memory). It is
the writer that does it, shielded, so a submitter that went away cannot make
this node's sessions miss a wake-up.

Cancellation: a submitter cancelled while waiting leaves its send to the
writer, which commits it anyway; the client learns the outcome by retrying
with the same client_msg_id (the retry answers the original ack).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from chatd import metrics
from chatd.db.messages import BatchFailed, MessageStore
from chatd.errors import ChatdError, Unavailable
from chatd.hub import Hub
from chatd.models import InboxEvent, Message, SendOutcome, SendRequest

log = logging.getLogger(__name__)

#: Most sends in one transaction; bounds the transaction's time and locks.
MAX_BATCH = 256
#: Sends waiting for a writer before submitters wait to enqueue (backpressure).
QUEUE = 4096


class _Pending:
    __slots__ = ("request", "done", "result")

    def __init__(self, request: SendRequest) -> None:
        self.request = request
        self.done = trio.Event()
        self.result: SendOutcome | ChatdError = Unavailable("not committed")


class SendWriter:
    def __init__(
        self,
        messages: MessageStore,
        hub: Hub,
        *,
        inbox_max_members: int,
        on_large_message: Callable[[Message], None] | None = None,
        writers: int = 2,
    ) -> None:
        self.messages = messages
        self.hub = hub
        self.on_large_message = on_large_message
        self.inbox_max_members = inbox_max_members
        self.writers = writers
        self._in, self._out = trio.open_memory_channel[_Pending](QUEUE)
        self.batches = 0
        self.sends = 0

    async def submit(self, request: SendRequest) -> SendOutcome:
        """Queue one send and wait for its commit; raises its ChatdError (NotMember, Unavailable)."""
        pending = _Pending(request)
        try:
            await self._in.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Unavailable("server is shutting down; retry") from None
        await pending.done.wait()
        if isinstance(pending.result, ChatdError):
            raise pending.result
        return pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.writers):
                nursery.start_soon(self._write_loop)
            task_status.started()

    async def _write_loop(self) -> None:
        async for first in self._out:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._out.receive_nowait())
                except trio.WouldBlock:
                    break
            # The answers must go out even if this task is being cancelled (shutdown).
            with trio.CancelScope(shield=True):
                await self._commit(batch)

    async def _commit(self, batch: Sequence[_Pending]) -> None:
        requests = [p.request for p in batch]
        try:
            results = await self.messages.send_batch(requests, self.inbox_max_members)
        except Unavailable as exc:
            results = [exc] * len(batch)
        except BatchFailed as exc:
            log.warning("batch of %d sends refused (%s); retrying one by one", len(batch), exc)
            results = [await self._commit_one(r) for r in requests]
        self.batches += 1
        metrics.COMMIT_BATCH.observe(len(batch))
        self.sends += len(batch)
        for pending, result in zip(batch, results):
            if isinstance(result, SendOutcome):
                self._publish(pending.request, result)
            pending.result = result
            pending.done.set()

    def _publish(self, request: SendRequest, outcome: SendOutcome) -> None:
        if outcome.ack.duplicate:
            return  # nothing new
        message = Message(
            channel_id=outcome.ack.channel_id,
            seq=outcome.ack.seq,
            sender_id=request.sender,
            client_msg_id=request.client_msg_id,
            text=request.text,
            created_at=outcome.ack.created_at,
            media=request.media,
            reply_to=outcome.reply_to,
            mentions=outcome.mentions,
        )
        if outcome.large:
            # No inbox rows: its online members get a live frame.
            if self.on_large_message is not None:
                self.on_large_message(message)
            return
        # One body shared by every recipient's event: rendered once, encoded once per format.
        fields = message.to_json()
        self.hub.publish((adv.user_id, InboxEvent(adv.head, "message", fields, shared=True)) for adv in outcome.advances)

    async def _commit_one(self, request: SendRequest) -> SendOutcome | ChatdError:
        try:
            return await self.messages.send(request, self.inbox_max_members)
        except ChatdError as exc:
            return exc
        except Exception:  # the database refused this one send: answer it, keep the others
            log.exception("send refused by the database")
            return Unavailable("the send could not be committed; retry")

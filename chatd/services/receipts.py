"""Receipts (PROTOCOL §5): group commit of watermarks, and the channel's receipt view.

:class:`ReceiptWriter` follows the send writer (chatd.services.writer): a
client acknowledging every message of a busy group must not become one
transaction per frame. Receipts wait in a map keyed by (user, channel,
state): a newer watermark of the same user for the same channel replaces a
queued older one (coalescing; the watermark is the user's, so two devices of
one user coalesce too). One writer task takes everything queued (up to
``MAX_BATCH``) and commits it as one transaction with one round trip
(``chatd_receipt_batch``), so receipts share one fsync and ride on the
batch's one NOTIFY. With no load a receipt waits for nothing (no timer).

After the commit the writer publishes small channels' ``receipt`` inbox
events to the hub (this node's sessions deliver them from memory; other nodes
learn of them from the batch's NOTIFY) and hands large channels' changes to
the live bus, which publishes them as ``receipt_update`` to every node.

A WebSocket ``receipt`` has no answer (only an ``error`` for a non-member),
so its submitter does not wait for the commit (:meth:`ReceiptWriter.submit`);
an HTTP receipt is answered 204 after its commit (:meth:`ReceiptWriter.commit`).

Failure: the database unreachable drops the batch (logged; a WebSocket
client is not told, an HTTP client gets ``unavailable``): receipts are
idempotent watermarks, and the client's next receipt carries the newer one.
A batch the database refuses as a whole is retried receipt by receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from chatd.db.messages import BatchFailed
from chatd.db.receipts import ReceiptResult, ReceiptStore
from chatd.errors import ChatdError, Invalid, NotMember, Unavailable
from chatd.hub import Hub
from chatd.limits import ID_MAX
from chatd.models import InboxEvent, Principal, ReceiptChange, ReceiptCounts, ReceiptRequest
from chatd.services.livebus import LiveBus

log = logging.getLogger(__name__)

#: Most receipts in one transaction.
MAX_BATCH = 512
#: Distinct (user, channel, state) receipts waiting; past it submitters wait (backpressure).
QUEUE = 8192
STATES = ("delivered", "read")

Key = tuple[int, int, str]
Refused = Callable[[ChatdError], None]


class _Pending:
    __slots__ = ("request", "done", "result", "refused")

    def __init__(self, request: ReceiptRequest) -> None:
        self.request = request
        self.done: trio.Event | None = None
        self.result: ReceiptResult | ChatdError = Unavailable("not committed")
        self.refused: list[Refused] = []


def check_receipt(channel_id: int, seq: object, state: object) -> tuple[int, str]:
    """The HTTP body's seq and state, validated (the WebSocket codec validates its frame)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= ID_MAX:
        raise Invalid(f"seq: an integer in 0..{ID_MAX}")
    if state not in STATES:
        raise Invalid('state: "delivered" or "read"')
    return seq, str(state)


class ReceiptWriter:
    def __init__(self, store: ReceiptStore, hub: Hub, bus: LiveBus, *, fanout_max_members: int) -> None:
        self.store = store
        self.hub = hub
        self.bus = bus
        self.fanout_max_members = fanout_max_members
        self._queued: dict[Key, _Pending] = {}
        self._wanted = trio.Event()
        self._space = trio.Event()
        #: Counters for the benchmarks: transactions, receipts committed, receipts that moved a watermark.
        self.batches = 0
        self.receipts = 0
        self.changes = 0
        self.coalesced = 0

    async def _enqueue(self, request: ReceiptRequest) -> _Pending:
        key = (request.user_id, request.channel_id, request.state)
        while True:
            pending = self._queued.get(key)
            if pending is not None:
                self.coalesced += 1
                if request.seq > pending.request.seq:
                    pending.request = request
                return pending
            if len(self._queued) < QUEUE:
                break
            await self._space.wait()
        pending = self._queued[key] = _Pending(request)
        self._wanted.set()
        return pending

    async def submit(self, request: ReceiptRequest, refused: Refused | None = None) -> None:
        """Queue a receipt without waiting for its commit; ``refused`` hears of a non-member."""
        pending = await self._enqueue(request)
        if refused is not None:
            pending.refused.append(refused)

    async def commit(self, request: ReceiptRequest) -> None:
        """Queue a receipt and wait for its commit; raises NotMember or Unavailable."""
        pending = await self._enqueue(request)
        if pending.done is None:
            pending.done = trio.Event()
        done = pending.done
        await done.wait()
        if isinstance(pending.result, ChatdError):
            raise pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wanted.wait()
            keys = list(self._queued)[:MAX_BATCH]
            batch = [self._queued.pop(k) for k in keys]
            if not self._queued:
                self._wanted = trio.Event()
            self._space.set()
            self._space = trio.Event()
            # Members rows in one order in every batch (channel, user): batches cannot deadlock.
            batch.sort(key=lambda p: (p.request.channel_id, p.request.user_id, p.request.state))
            with trio.CancelScope(shield=True):
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        requests = [p.request for p in batch]
        results: list[ReceiptResult | ChatdError]
        try:
            results = list(await self.store.commit_batch(requests, self.fanout_max_members))
        except Unavailable as exc:
            log.warning("batch of %d receipts not committed: %s", len(batch), exc)
            results = [exc] * len(batch)
        except BatchFailed as exc:
            log.warning("batch of %d receipts refused (%s); retrying one by one", len(batch), exc)
            results = [await self._commit_one(r) for r in requests]
        self.batches += 1
        self.receipts += len(batch)
        for pending, result in zip(batch, results):
            if isinstance(result, ReceiptChange):
                self.changes += 1
                self._publish(result)
            elif isinstance(result, NotMember):
                for refused in pending.refused:
                    refused(result)
            pending.result = result
            if pending.done is not None:
                pending.done.set()

    async def _commit_one(self, request: ReceiptRequest) -> ReceiptResult | ChatdError:
        try:
            return (await self.store.commit_batch([request], self.fanout_max_members))[0]
        except (Unavailable, BatchFailed) as exc:
            log.warning("receipt refused by the database: %s", exc)
            return Unavailable("the receipt could not be committed; retry")

    def _publish(self, change: ReceiptChange) -> None:
        if change.large:
            self.bus.receipt(change.channel_id, change.user_id, change.state, change.seq)
            return
        fields = change.to_json()
        self.hub.publish((adv.user_id, InboxEvent(adv.head, "receipt", fields, shared=True)) for adv in change.advances)


class ReceiptService:
    """The HTTP side: post a receipt (answered after its commit), read the channel's view."""

    def __init__(self, store: ReceiptStore, writer: ReceiptWriter) -> None:
        self.store = store
        self.writer = writer

    async def post(self, principal: Principal, channel_id: int, seq: object, state: object) -> None:
        seq_, state_ = check_receipt(channel_id, seq, state)
        await self.writer.commit(ReceiptRequest(principal.user_id, channel_id, state_, seq_))

    async def view(self, principal: Principal, channel_id: int, seq: int) -> ReceiptCounts:
        return await self.store.watermarks(channel_id, principal.user_id, seq)

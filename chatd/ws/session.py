"""One WebSocket connection: a nursery of reader, sender, pump and writer.

- reader: decodes client frames (one boundary, :mod:`chatd.wire.codec`),
  answers malformed ones with ``error`` and keeps going, notes the time of
  each frame (the node's idle sweep, :mod:`chatd.ws.heartbeat`, closes a
  connection silent for 3 x heartbeat), and hands work to the others;
- sender: commits this connection's sends one at a time, in the order the
  client sent them, and queues each ``ack`` after the commit;
- pump: after ``sync``, reads the inbox from the cursor and queues events,
  then ``synced``, then waits for the user's inbox signal and reads again.
  Catch-up and live delivery are one loop, so a lost wake-up costs latency,
  never an event, and the cursor makes every event go out once, in order.
  One pump task serves every ``sync`` of the connection: a new ``sync``
  replaces the pending one (a flood of them costs a variable write each, not
  a task each);
- writer: the only task that writes to the socket, draining a bounded queue.

Backpressure: the outgoing queue is bounded (``server.outgoing_queue``). A
producer that finds it full for ``server.send_stall_s`` closes the connection
with 1008; the client catches up with ``sync`` after reconnecting. Every
producer is this connection's own task, so a slow client never slows others.
A client that reads nothing at all cannot receive the close frame either: a
socket write that stalls for ``send_stall_s`` drops the connection (the
client sees 1006).

Control frames (``sync``, ``ping``, ``presence_subscribe``, ``typing`` and
frames that fail to decode) are budgeted per connection and per user on this
node (token buckets, generous for any real client); past the budget the
connection is closed with 1008.

Resource handling: everything lives in the connection's nursery and ends with
it; the transport is closed in ``finally`` with the first close code asked for.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

from chatd import logs, metrics
from chatd.errors import ChatdError, RateLimited, Unavailable
from chatd.hub import Hub, InboxSignal
from chatd.models import InboxEvent, Message, Principal
from chatd.services.inbox import PAGE, InboxService
from chatd.services.messaging import MessageService
from chatd.services.ratelimit import RateLimiter, take_token
from chatd.wire.codec import FrameError, WireFormat, decode_client_frame, encode_event, encode_frame
from chatd.wire.frames import (
    ClientFrame,
    PingFrame,
    PresenceSubscribeFrame,
    ReceiptFrame,
    SendFrame,
    SyncFrame,
    TypingFrame,
)
from chatd.ws.live import ConnectionLive, LiveServices
from chatd.wire.outbound import AckFrame, ErrorFrame, LiveChange, LiveMessage, Pong, Reconnect, ServerFrame, Synced, Welcome

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_RESTART = 1012
CLOSE_INTERNAL = 1011
CLOSE_REVOKED = 4001

#: Sends queued per connection while one commits (the reader waits beyond it).
SEND_QUEUE = 32
#: Most queued frames written to the socket at once.
WRITE_BATCH = 64
#: Control frames per connection: burst, then per second. A real client sends a
#: ``sync`` per connect, a ``ping`` per heartbeat and a few ``typing`` and
#: ``presence_subscribe`` frames a minute; these are two orders of magnitude above.
CONTROL_BURST = 100.0
CONTROL_RATE_PER_S = 20.0


#: :meth:`Transport.try_send`'s answers.
NOT_SENT, SENT, PARTLY_SENT = 0, 1, 2


class TransportClosed(Exception):
    """The peer went away or the socket failed."""


class Transport(Protocol):
    """The socket as the session sees it (chatd.web.ws_wsproto's transport)."""

    async def receive(self) -> str | bytes: ...

    async def send(self, data: str | bytes) -> None: ...

    async def send_many(self, frames: Sequence[str | bytes]) -> None:
        """Send several frames, in order (one socket write where the transport can)."""
        ...

    def try_send(self, data: str | bytes) -> int:
        """Write one frame now if that needs no waiting: NOT_SENT, SENT or PARTLY_SENT
        (chatd.web.ws_wsproto); after PARTLY_SENT the next send_many writes the rest first."""
        ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """A write was cut short: send nothing more (no close frame); the socket is dropped."""
        ...


@attrs.frozen
class SessionSettings:
    node: str
    heartbeat_s: float
    outgoing_queue: int
    send_stall_s: float


class Session:
    """One authenticated WebSocket connection, from ``welcome`` to its close.

    Built by the composition root for each accepted upgrade and run with
    :meth:`run`, which returns when the connection is over and never raises
    for the peer's faults. The hub reaches it only through the small
    :class:`chatd.hub.Drainable` surface (drain, revoke, push a live message).
    """

    __slots__ = (
        "transport", "fmt", "principal", "user_id", "device_id", "hub", "inbox", "messages", "settings",
        "control", "_out_send", "_out_recv", "_sends_in", "_nursery", "_pump_scope", "_pending_sync",
        "_sync_wanted", "_close_code", "_close_reason", "_draining", "_log_tag", "_ctl_tokens", "_ctl_stamp",
        "last_frame_at", "_cursor", "_following", "_queued", "_live", "_format_name", "live",
    )

    def __init__(
        self,
        transport: Transport,
        fmt: WireFormat,
        principal: Principal,
        *,
        hub: Hub,
        inbox: InboxService,
        messages: MessageService,
        settings: SessionSettings,
        control: RateLimiter,
        live: LiveServices | None = None,
    ) -> None:
        self.transport = transport
        self.fmt = fmt
        self.principal = principal
        self.user_id = principal.user_id
        self.device_id = principal.device_id
        self.hub = hub
        self.inbox = inbox
        self.messages = messages
        self.settings = settings
        #: The per-user control-frame budget of this node (shared by the user's connections).
        self.control = control
        # None in the queue: no frame, only "write what try_send left pending" (see _emit).
        self._out_send, self._out_recv = trio.open_memory_channel[str | bytes | None](settings.outgoing_queue)
        #: Items queued for the writer and not yet written: frames go straight to the socket only at 0.
        self._queued = 0
        #: The inbox_seq of the last event delivered (queued or written) since the last ``sync``.
        self._cursor = 0
        #: Set while the pump is parked, caught up: the hub then hands events to live_event.
        self._live: trio.Event | None = None
        # The send queue and its task exist once the client first sends: most
        # connections of a big install sit idle, and each costs memory.
        self._sends_in: trio.MemorySendChannel[SendFrame] | None = None
        self._nursery: trio.Nursery | None = None
        # The pump task starts with the first ``sync``; later ones only replace
        # ``_pending_sync``, cancel the running delivery and set ``_sync_wanted``.
        self._pump_scope: trio.CancelScope | None = None
        self._pending_sync: SyncFrame | None = None
        self._sync_wanted: trio.Event | None = None
        self._ctl_tokens = CONTROL_BURST
        self._ctl_stamp = self.last_frame_at = trio.current_time()
        self._close_code: int | None = None
        self._close_reason = ""
        self._draining = False
        self._log_tag = f"conn user={self.user_id} device={self.device_id}"
        #: True once a ``sync`` is served: ``_cursor`` then means something (see ``delivered``).
        self._following = False
        self._format_name = "msgpack" if fmt.is_binary else "json"
        #: Receipts, typing and presence (chatd.ws.live), when the node runs them.
        self.live = ConnectionLive(live, principal, self, self._queue) if live is not None else None

    @property
    def delivered(self) -> int | None:
        """The inbox_seq of the last event delivered (queued or written) while a ``sync``
        is served, None before the first: the hub reads it for chatd_inbox_backlog_seconds."""
        return self._cursor if self._following else None

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; never raises for the peer's faults."""
        logs.bind_principal(self.user_id, self.device_id)
        opened = trio.current_time()
        log.info("connection open format=%s", self._format_name)
        metrics.connection_opened(self._format_name)
        self.hub.add_session(self)
        if self.live is not None:
            self.live.seen()
        try:
            try:
                welcome = Welcome(
                    self.user_id, self.device_id, self.settings.node, self.settings.heartbeat_s,
                    self.principal.inbox_head,
                )
                metrics.frame_out(Welcome)
                await self.transport.send(encode_frame(welcome, self.fmt))
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._close_code is not None:  # revoked while we said welcome
                        nursery.cancel_scope.cancel()
                    if self.hub.draining.is_set():  # accepted just as the node began to drain
                        self.drain(self.hub.drain_after_ms)
                    nursery.start_soon(self._writer)
                    # The reader runs in this task, not a child of its own: one task fewer
                    # per connection (~2 KiB of an idle connection's memory, issue 14).
                    await self._reader()
            except* TransportClosed:
                pass
            except* Unavailable:
                self._request_close(CLOSE_TRY_AGAIN, "database unavailable")
            except* Exception:
                log.exception("%s failed", self._log_tag)
                self._request_close(CLOSE_INTERNAL, "internal error")
            finally:
                code = self._close_code or CLOSE_NORMAL
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await self.transport.close(code, self._close_reason)
                    except TransportClosed:
                        pass
                log.info("connection closed code=%s reason=%s duration_s=%.1f",
                         code, self._close_reason or "peer closed", trio.current_time() - opened)
        finally:
            self.hub.remove_session(self)
            metrics.connection_closed(self._format_name)
            if self.live is not None:
                self.live.close()

    def _request_close(self, code: int, reason: str) -> None:
        """Close with ``code`` (the first one asked for wins) and end every task."""
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def revoke(self) -> None:
        """The device logged out (or its user was disabled): close at once."""
        self._request_close(CLOSE_REVOKED, "token revoked")

    def close_idle(self) -> None:
        """The client sent nothing for 3 x heartbeat (the hub's idle sweep found it)."""
        self._request_close(CLOSE_GOING_AWAY, "idle timeout")

    def drain(self, after_ms: int) -> None:
        """The node is stopping: say ``reconnect``, finish queued sends, then close."""
        if self._draining:
            return
        self._draining = True
        self.offer(Reconnect(random.randint(0, max(0, after_ms))))
        if self._sends_in is not None:
            self._sends_in.close()  # the sender answers what is queued, then closes the outgoing queue
        else:
            self._out_send.close()  # the writer flushes the reconnect frame, then closes

    # --- tasks -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        # No timer here: the hub's idle sweep closes a connection silent for 3 x heartbeat.
        while True:
            data = await self.transport.receive()
            self.last_frame_at = trio.current_time()
            if self.live is not None:
                self.live.seen()
            try:
                frame = decode_client_frame(data, self.fmt)
            except FrameError as exc:
                metrics.frame_in("invalid")
                if self._over_control_budget():
                    return
                await self._queue(ErrorFrame(exc.code, exc.message, exc.ref))
                continue
            metrics.frame_in(frame.TYPE)
            if not isinstance(frame, (SendFrame, ReceiptFrame)) and self._over_control_budget():
                return
            await self._dispatch(frame)

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, SendFrame):
            if self._draining:
                await self._queue(ErrorFrame("unavailable", "server is shutting down; reconnect and retry", frame.ref))
                return
            if self._sends_in is None:
                assert self._nursery is not None
                self._sends_in, sends_out = trio.open_memory_channel[SendFrame](SEND_QUEUE)
                self._nursery.start_soon(self._sender, sends_out)
            try:
                await self._sends_in.send(frame)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                await self._queue(ErrorFrame("unavailable", "server is shutting down; reconnect and retry", frame.ref))
        elif isinstance(frame, SyncFrame):
            self._request_sync(frame)
        elif isinstance(frame, PingFrame):
            await self._queue(Pong(frame.t, frame.ref))
        elif isinstance(frame, (ReceiptFrame, TypingFrame, PresenceSubscribeFrame)):
            if self.live is not None:
                await self.live.handle(frame)

    async def _sender(self, sends: trio.MemoryReceiveChannel[SendFrame]) -> None:
        async with sends:
            async for frame in sends:
                await self._queue(await self._send_one(frame))
        # Only a drain closes the send queue: everything queued is answered; flush and close.
        self._out_send.close()

    async def _send_one(self, frame: SendFrame) -> AckFrame | ErrorFrame:
        try:
            ack = await self.messages.send(
                self.principal, frame.channel_id, frame.client_msg_id, frame.text, frame.media_ids, frame.reply_to
            )
        except RateLimited as exc:
            return ErrorFrame(exc.code, exc.message, frame.ref, math.ceil(exc.retry_after_s * 1000))
        except ChatdError as exc:
            return ErrorFrame(exc.code, exc.message, frame.ref)
        return AckFrame(ack, frame.ref)

    def _over_control_budget(self) -> bool:
        """Take a control-frame token (this connection's, then the user's); past either
        budget the connection is closed with 1008 and True is returned."""
        now = trio.current_time()
        self._ctl_tokens, wait = take_token(self._ctl_tokens, self._ctl_stamp, now, CONTROL_RATE_PER_S, CONTROL_BURST)
        self._ctl_stamp = now
        if wait == 0.0 and self.control.take(self.user_id) == 0.0:
            return False
        log.info("%s closed: too many control frames", self._log_tag)
        self._request_close(CLOSE_POLICY, "too many control frames")
        return True

    def _request_sync(self, frame: SyncFrame) -> None:
        """(Re)start delivery from ``frame.after``: a newer ``sync`` replaces a pending one."""
        self._pending_sync = frame
        if self._sync_wanted is None:
            assert self._nursery is not None
            self._sync_wanted = trio.Event()
            self._nursery.start_soon(self._pump)
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        self._live = None  # no event of the replaced delivery goes out directly any more
        self._sync_wanted.set()

    async def _pump(self) -> None:
        """Serve ``sync`` requests one at a time, each until a newer one replaces it."""
        assert self._sync_wanted is not None
        signal = self.hub.subscribe(self.user_id)
        try:
            while True:
                await self._sync_wanted.wait()
                self._sync_wanted = trio.Event()
                frame, self._pending_sync = self._pending_sync, None
                if frame is None:
                    continue
                with trio.CancelScope() as scope:
                    self._pump_scope = scope
                    await self._deliver(signal, frame)
                self._pump_scope = None
        finally:
            self.hub.unsubscribe(self.user_id)

    async def _cursor_is_known(self, signal: InboxSignal, cursor: int) -> bool:
        """A cursor past the user's inbox head (another or a restored server's) cannot be
        served: the client must start again from one it can trust."""
        if cursor <= self.principal.inbox_head or cursor <= signal.head:
            return True
        return cursor <= await self.inbox.head(self.user_id)

    async def _deliver(self, signal: InboxSignal, frame: SyncFrame) -> None:
        """Catch up from the frame's cursor, say ``synced``, then follow the inbox live.

        Caught up, the pump parks and the hub hands each event this node commits
        for the user to :meth:`live_event`, which writes it at once (no task
        switch, no queue); anything else (a gap, another node's advance, a
        re-read after a lost LISTEN) wakes the pump, which reads from its cursor.
        """
        self._cursor = frame.after
        self._following = True
        if not await self._cursor_is_known(signal, self._cursor):
            await self._queue(ErrorFrame("invalid", "after: beyond the inbox head; sync from 0 or inbox_head", frame.ref))
            return
        caught_up = False
        while True:
            wake = signal.event
            events = signal.events_after(self._cursor) if caught_up else None
            if events is None:
                events = await self.inbox.read(self.user_id, self._cursor, PAGE)
            for event in events:
                await self._queue_event(event)
                self._cursor = event.inbox_seq
            if len(events) == PAGE:
                continue
            if not caught_up:
                caught_up = True
                await self._queue(Synced(self._cursor))
            if signal.head > self._cursor or wake.is_set():
                continue
            live = self._live = trio.Event()
            signal.sinks.add(self)
            try:
                await live.wait()
            finally:
                signal.sinks.discard(self)
                self._live = None

    def live_event(self, event: InboxEvent | None) -> None:
        """From the hub (the publisher's task): the user's inbox advanced, ``event`` in hand or not.

        The next event in order is written now; anything else wakes the pump. Never
        raises into the publisher: a failure closes this connection only.
        """
        try:
            if self._live is None:
                return
            if event is not None and event.inbox_seq == self._cursor + 1:
                self._cursor = event.inbox_seq
                metrics.frame_out("event")
                self._emit(encode_event(event, self.fmt))
                return
            if event is not None and event.inbox_seq <= self._cursor:
                return
            self._live.set()  # a gap or an advance not in hand: the pump reads from its cursor
            self._live = None
        except Exception:
            log.exception("%s live delivery failed", self._log_tag)
            self._request_close(CLOSE_INTERNAL, "internal error")

    async def _queue_event(self, event: InboxEvent) -> None:
        metrics.frame_out("event")
        await self._queue_data(encode_event(event, self.fmt))

    async def _writer(self) -> None:
        async with self._out_recv:
            async for data in self._out_recv:
                batch = [data]
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(self._out_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                # A write cut short leaves half a frame on the wire, after which no
                # close frame can be sent: so a write is not cancelled with the
                # session, it is bounded instead. Past the bound the client is
                # too slow and the connection is dropped without a close frame.
                # One scope, shielded and with its own deadline (cheaper than two nested).
                bound = trio.CancelScope(shield=True, deadline=trio.current_time() + self.settings.send_stall_s)
                with bound:
                    await self.transport.send_many([f for f in batch if f is not None])
                self._queued -= len(batch)
                if bound.cancelled_caught:
                    self.transport.abort()
                    self._request_close(CLOSE_POLICY, "slow consumer: socket write stalled")
                    return
        self._request_close(CLOSE_RESTART, "server restarting")

    # --- the outgoing queue ------------------------------------------------------------------

    async def _queue(self, frame: ServerFrame) -> None:
        """Queue a frame for the writer; a queue full for send_stall_s closes with 1008."""
        metrics.frame_out(type(frame))
        await self._queue_data(encode_frame(frame, self.fmt))

    async def _queue_data(self, data: str | bytes) -> None:
        written = self._write_now(data)
        if written:
            return
        item = None if written is None else data
        try:
            self._out_send.send_nowait(item)
            self._queued += 1
            return
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        with trio.move_on_after(self.settings.send_stall_s):
            try:
                await self._out_send.send(item)
                self._queued += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            return
        log.info("%s slow consumer: outgoing queue full", self._log_tag)
        self._request_close(CLOSE_POLICY, "slow consumer: outgoing queue full")

    def push_message(self, message: Message) -> None:
        """A large channel's message, live (from the hub): see :meth:`offer`."""
        self.offer(LiveMessage(message))

    def push_change(self, kind: str, fields: dict[str, Any]) -> None:
        """A change to a large channel's message, live (from the hub): see :meth:`offer`."""
        self.offer(LiveChange(kind, fields))

    def offer(self, frame: ServerFrame) -> None:
        """Send a frame without waiting (for callers outside this connection): a full
        queue means a slow consumer, closed with 1008; it never makes the caller wait."""
        metrics.frame_out(type(frame))
        self._emit(encode_frame(frame, self.fmt))

    def _write_now(self, data: str | bytes) -> bool | None:
        """Write ``data`` now when nothing is queued before it and the socket takes it
        without blocking: no task switch, no queue (live events, acks, pongs).

        True: written whole. False: nothing written, queue ``data``. None: partly
        written, the transport keeps the rest; queue None so that the writer
        writes it before anything else.
        """
        if self._queued or self._draining or self._close_code is not None:
            return False
        sent = self.transport.try_send(data)
        return True if sent == SENT else None if sent == PARTLY_SENT else False

    def _emit(self, data: str | bytes) -> None:
        """Write ``data`` now if it can be (:meth:`_write_now`), else queue it without
        waiting: a full queue is a slow consumer (the fan-out path)."""
        written = self._write_now(data)
        if written:
            return
        item = None if written is None else data
        try:
            self._out_send.send_nowait(item)
            self._queued += 1
        except trio.WouldBlock:
            self._request_close(CLOSE_POLICY, "slow consumer: outgoing queue full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

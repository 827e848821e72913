"""The load generator's client: one device on one WebSocket, speaking PROTOCOL §3.

Built on Trio and trio-websocket only (never on chatd's code), it does what a
real client does: authenticate with a bearer token, read ``welcome``, ``sync``
from a cursor, send with a ``client_msg_id`` (echoed as ``ref``), answer the
heartbeat with ``ping``. It also checks what it is sent: every ``event``
goes through an :class:`~benchmarks.ledger.InboxLedger`, every ``pong`` must
echo the pings in order, and any ``error`` or ``reconnect`` frame, or a close
nobody asked for, is recorded for the run to fail on.

Timestamps: ``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every
process on the machine, so a send time written into a message's text by one
worker process can be compared with the receive time in another. Message
texts start with the nanoseconds of the (scheduled) send time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, connect_websocket_url

from benchmarks.ledger import InboxLedger

#: Errors that mean "could not connect" (refused, reset, handshake refused or timed out).
CONNECT_ERRORS = (OSError, HandshakeError, trio.TooSlowError, ConnectionClosed)

#: How long a polite close (the WebSocket closing handshake) may take.
CLOSE_TIMEOUT_S = 5.0

AckHook = Callable[["Client", dict[str, Any], float, float], None]
MessageHook = Callable[["Client", dict[str, Any], float], None]


class ProtocolError(RuntimeError):
    """The server answered something the contract does not allow here."""


class WelcomeTimeout(trio.TooSlowError):
    """The WebSocket opened, but ``welcome`` did not come in time."""


class HandshakeTimeout(trio.TooSlowError):
    """TCP connect plus the HTTP upgrade did not finish in time."""


def message_text(send_time: float, filler: str) -> str:
    """A message text carrying its send time (monotonic ns), parsed back by :func:`sent_at`."""
    return f"{int(send_time * 1e9)} {filler}"


def sent_at(text: str) -> float:
    return int(text.split(" ", 1)[0]) / 1e9


class Client:
    """One connection of one user's device; see the module docstring."""

    def __init__(
        self,
        ws_url: str,
        user_id: int,
        token: str,
        *,
        on_ack: AckHook | None = None,
        on_message: MessageHook | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.user_id = user_id
        self.token = token
        self.on_ack = on_ack
        self.on_message = on_message
        self.ws: WebSocketConnection | None = None
        self.welcome: dict[str, Any] = {}
        self.ledger: InboxLedger | None = None
        #: client_msg_id -> time the send was due (scheduled), for send->ack latency.
        self.pending: dict[str, float] = {}
        self._ack_waiters: dict[str, trio.Event] = {}
        self._synced = trio.Event()
        self.synced_cursor: int | None = None
        self.errors: list[dict[str, Any]] = []
        self.dropped: str | None = None
        self.closing = False
        self.pings_sent = 0
        #: Highest ping counter answered, answers seen, and answers that broke the order.
        self.pong_top = 0
        self.pongs = 0
        self.pong_duplicated = 0
        self.pong_out_of_order = 0
        self.last_frame_at = 0.0

    # --- connecting ----------------------------------------------------------------

    async def connect(self, nursery: trio.Nursery, timeout_s: float = 30.0) -> None:
        """Open the socket, read ``welcome`` and start reading; raises a CONNECT_ERRORS error."""
        self.closing = False
        self.dropped = None
        deadline = trio.current_time() + timeout_s
        with trio.move_on_at(deadline) as handshake:
            ws = await connect_websocket_url(
                nursery,
                self.ws_url,
                extra_headers=[(b"Authorization", f"Bearer {self.token}".encode())],
                message_queue_size=16,
            )
        if handshake.cancelled_caught:
            raise HandshakeTimeout()
        try:
            with trio.move_on_at(deadline) as waiting:
                welcome = json.loads(await ws.get_message())
            if waiting.cancelled_caught:
                raise WelcomeTimeout()
        except BaseException:
            nursery.start_soon(_abort, ws)
            raise
        if welcome.get("type") != "welcome" or welcome.get("user_id") != self.user_id:
            await ws.aclose()
            raise ProtocolError(f"expected welcome for user {self.user_id}, got {welcome}")
        self.ws = ws
        self.welcome = welcome
        nursery.start_soon(self._read_loop, ws)

    async def sync(self, after: int | None = None, timeout_s: float = 60.0) -> int:
        """``sync`` from ``after`` (default: ``welcome.inbox_head``, skipping history); waits for ``synced``.

        Returns the ``synced`` cursor, or -1 when the connection ended first.

        The ledger starts at ``after`` unless the client already has one (a
        reconnect continues the same ledger from its cursor).
        """
        if after is None:
            after = int(self.welcome["inbox_head"])
        if self.ledger is None:
            self.ledger = InboxLedger(after)
        self._synced = trio.Event()
        self.synced_cursor = None
        if not await self._send({"type": "sync", "after": after}):
            return -1
        with trio.fail_after(timeout_s):
            await self._synced.wait()
        # None: the connection ended before ``synced`` (see ``dropped``).
        return -1 if self.synced_cursor is None else self.synced_cursor

    # --- sending -------------------------------------------------------------------------

    async def send(self, channel_id: int, client_msg_id: str, text: str, due: float) -> bool:
        """Send one message; its ack is matched by ``client_msg_id`` (and ``ref``). False: connection gone."""
        self.pending[client_msg_id] = due
        return await self._send(
            {"type": "send", "channel_id": channel_id, "client_msg_id": client_msg_id, "text": text,
             "ref": client_msg_id}
        )

    async def send_and_wait(self, channel_id: int, client_msg_id: str, text: str, due: float) -> bool:
        """Send and wait for the answer (closed loop); False when it was an error."""
        done = self._ack_waiters[client_msg_id] = trio.Event()
        if not await self.send(channel_id, client_msg_id, text, due):
            self._ack_waiters.pop(client_msg_id, None)
            return False
        await done.wait()
        return client_msg_id not in self.pending

    async def ping_forever(self, period_s: float, first_s: float) -> None:
        """Heartbeat: a ``ping`` with a counter every ``period_s``, until cancelled or the connection ends.

        Cancellation: only the sleeps are cancellable; a ping being written is
        finished (bounded by CLOSE_TIMEOUT_S), so a counted ping was really sent.
        """
        await trio.sleep(first_s)
        while True:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                self.pings_sent += 1
                if not await self._send({"type": "ping", "t": self.pings_sent}):
                    self.pings_sent -= 1
                    return
            await trio.sleep(period_s)

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    await self.ws.aclose()
                except Exception:  # already gone: nothing to close
                    pass

    async def _send(self, frame: dict[str, Any]) -> bool:
        """Write one frame; False when the connection is gone (recorded in ``dropped``)."""
        if self.ws is None:
            raise ProtocolError("not connected")
        try:
            await self.ws.send_message(json.dumps(frame, separators=(",", ":")))
        except ConnectionClosed as exc:
            if not self.closing and self.dropped is None:
                self.dropped = f"closed {getattr(exc.reason, 'code', '?')} (on send)"
            return False
        return True

    # --- receiving -------------------------------------------------------------------------

    async def _read_loop(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                data = await ws.get_message()
                now = time.monotonic()
                self.last_frame_at = now
                frame = json.loads(data)
                kind = frame.get("type")
                if kind == "event":
                    self._on_event(frame, now)
                elif kind == "ack":
                    self._on_ack(frame, now)
                elif kind == "synced":
                    self.synced_cursor = frame["cursor"]
                    self._synced.set()
                elif kind == "pong":
                    self._on_pong(frame)
                elif kind == "error":
                    self._on_error(frame)
                elif kind == "reconnect":
                    self.errors.append(frame)
                # presence, typing, receipt_update: not used by the workloads
        except ConnectionClosed as exc:
            if not self.closing:
                reason = exc.reason
                self.dropped = f"closed {getattr(reason, 'code', '?')} {getattr(reason, 'reason', '')}".strip()
        finally:
            # Whoever waits for an answer on this connection must not wait forever.
            for waiter in self._ack_waiters.values():
                waiter.set()
            self._ack_waiters.clear()
            self._synced.set()

    def _on_event(self, frame: dict[str, Any], now: float) -> None:
        if self.ledger is None:
            raise ProtocolError(f"event before sync on user {self.user_id}")
        if self.ledger.on_event(frame) and self.on_message is not None:
            self.on_message(self, frame, now)

    def _on_ack(self, frame: dict[str, Any], now: float) -> None:
        cmid = frame.get("client_msg_id")
        due = self.pending.pop(cmid, None) if isinstance(cmid, str) else None
        if due is None or frame.get("duplicate"):
            self.errors.append({"unexpected_ack": frame})
        elif self.on_ack is not None:
            self.on_ack(self, frame, now - due, now)
        waiter = self._ack_waiters.pop(cmid, None) if isinstance(cmid, str) else None
        if waiter is not None:
            waiter.set()

    def _on_pong(self, frame: dict[str, Any]) -> None:
        """Pongs must echo our pings' counters once each, in order (any frame is a heartbeat)."""
        t = frame.get("t")
        if not isinstance(t, int) or t > self.pings_sent:
            self.errors.append({"unexpected_pong": frame})
        elif t <= self.pong_top:
            self.pong_duplicated += 1
        else:
            if t != self.pong_top + 1:
                self.pong_out_of_order += 1
            self.pong_top = t
            self.pongs += 1

    def _on_error(self, frame: dict[str, Any]) -> None:
        self.errors.append(frame)
        ref = frame.get("ref")
        if isinstance(ref, str):
            waiter = self._ack_waiters.pop(ref, None)
            if waiter is not None:
                waiter.set()


async def _abort(ws: WebSocketConnection) -> None:
    with trio.move_on_after(2):
        await ws.aclose()

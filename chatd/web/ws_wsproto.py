"""``/v1/ws`` on a bare wsproto connection: chatd's one WebSocket implementation.

Every upgrade comes here: on a fresh connection straight from the listener
(chatd.web.listener), and after requests on a keep-alive HTTP connection by
way of :mod:`chatd.web.http_handoff`; hypercorn's own WebSocket code is never
used. So there is one set of limits: ``limits.max_frame_bytes`` per message,
enforced while the frame is read (wsproto hands over payload as it arrives;
a message is dropped with 1009 as soon as it passes the limit, whatever its
header announced), and no compression extension is ever negotiated.

Protocol violations close with the code RFC 6455 gives them (wsproto reports
it): 1007 for invalid UTF-8 in a text message, 1002 for the rest (unmasked
client frame, RSV bits without an extension, reserved opcode, fragmented or
oversize control frame). The transport answers pings and sends many queued
frames in one socket write.

Outgoing data frames are framed here (:func:`frame_bytes`, RFC 6455 §5.2: a
server's frames are unmasked and chatd sends whole messages only) rather than
by wsproto, which costs several times more per frame; wsproto still frames
control frames and parses everything that comes in. :meth:`WsprotoTransport.try_send`
writes a frame straight to the socket when nothing else is being written and
the kernel takes it without blocking: the fan-out path (chatd.ws.session).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
)

from chatd import logs
from chatd.errors import BadRequest, ChatdError, NotFound
from chatd.web.http_errors import linger
from chatd.web.origins import OriginPolicy
from chatd.web.ws_endpoint import bearer_token, pick_format, refuse
from chatd.ws.session import NOT_SENT, PARTLY_SENT, SENT, TransportClosed

log = logging.getLogger(__name__)

WS_PATH = "/v1/ws"
CLOSE_TOO_BIG = 1009
RECEIVE_BYTES = 65536
#: From the end of the request head, the handshake (authentication included) must end within this.
HANDSHAKE_TIMEOUT_S = 10.0

_conn_ids = itertools.count(1)


def frame_bytes(data: str | bytes) -> bytes:
    """One whole, unmasked WebSocket data frame (text for str, binary for bytes), as wsproto frames it."""
    if isinstance(data, str):
        payload, first = data.encode("utf-8"), 0x81
    else:
        payload, first = data, 0x82
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


class WsprotoTransport:
    """The session's transport over a wsproto connection on a trio stream.

    Resource handling: one task receives, one sends (the session's reader
    and writer); pongs and close frames from the receiving side take the
    same send lock. The stream itself is closed by the listener.
    """

    __slots__ = ("_stream", "_ws", "_max", "_send_lock", "_parts", "_size", "_events", "_aborted", "_socket",
                 "_pending")

    def __init__(self, stream: trio.abc.Stream, ws: Connection, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_bytes
        self._send_lock = trio.Lock()
        self._parts: list[Any] = []
        self._size = 0
        self._events: Iterator[Event] = iter(())
        self._aborted = False
        #: The socket, for :meth:`try_send` (None for a stream that has none: no direct writes).
        self._socket: Any = getattr(stream, "socket", None)
        #: Bytes of a frame :meth:`try_send` could write only in part: written first by the next send.
        self._pending = b""

    async def receive(self) -> str | bytes:
        while True:
            for event in self._events:
                if isinstance(event, Message):
                    data = event.data
                    self._size += len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
                    if self._size > self._max:
                        await self._fail(CLOSE_TOO_BIG, "frame too large")
                    self._parts.append(data)
                    if event.message_finished:
                        whole: str | bytes = "".join(self._parts) if isinstance(data, str) else b"".join(self._parts)
                        self._parts, self._size = [], 0
                        return whole
                elif isinstance(event, Ping):
                    await self._send_bytes(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.OPEN:
                        # Not the peer's close: wsproto found a protocol violation
                        # and says which code it deserves (1002, 1007...).
                        await self._fail(event.code, event.reason or "protocol error")
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._send_bytes(self._ws.send(event.response()))
                    raise TransportClosed(event.code)
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed() from exc
            if not data:
                raise TransportClosed()
            self._ws.receive_data(bytes(data))
            self._events = self._ws.events()

    async def send(self, data: str | bytes) -> None:
        await self.send_many((data,))

    async def send_many(self, frames: Sequence[str | bytes]) -> None:
        """Send several frames with one socket write."""
        if self._aborted or self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed()
        await self._send_bytes(b"".join(map(frame_bytes, frames)))

    def try_send(self, data: str | bytes) -> int:
        """Write one frame now, without waiting, if nothing else is being written.

        NOT_SENT: nothing written (a write is in progress, bytes are pending, the
        kernel's buffer is full, the socket failed or is closing): the caller
        queues the frame for the writer, whose write reports any failure.
        SENT: all of it is in the kernel's buffer. PARTLY_SENT: the rest is kept
        here and goes first in the next write; the caller must make one happen.
        """
        sock = self._socket
        if (sock is None or self._pending or self._aborted or self._send_lock.locked()
                or self._ws.state is not ConnectionState.OPEN):
            return NOT_SENT
        out = frame_bytes(data)
        try:
            n = os.write(sock.fileno(), out)
        except OSError:  # EAGAIN, or a failed socket (the writer's own write will say so)
            return NOT_SENT
        if n == len(out):
            return SENT
        self._pending = out[n:]
        return PARTLY_SENT

    def abort(self) -> None:
        self._aborted = True

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame, then read until the peer's answer (or EOF).

        Closing the socket with unread data in it makes the kernel send a reset,
        which can destroy our close frame in the peer's buffers (it would see
        1006); reading until the peer closes too avoids that. The caller bounds
        the wait.
        """
        if self._aborted or self._ws.state is not ConnectionState.OPEN:
            return
        await self._send_bytes(self._ws.send(CloseConnection(code=code, reason=reason)))
        while self._state() is not ConnectionState.CLOSED:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self._ws.receive_data(bytes(data))
            for _event in self._ws.events():
                pass  # frames after our close are dropped; the peer's close ends the loop

    async def _fail(self, code: int, reason: str) -> None:
        """Close for the peer's fault: send the close frame, drop what still comes, raise.

        Nothing more is parsed (after a violation the frame decoder's state is
        meaningless); reading stops at EOF or :func:`chatd.web.http_errors.linger`'s bounds.
        """
        if not self._aborted and self._ws.state is ConnectionState.OPEN:
            await self._send_bytes(self._ws.send(CloseConnection(code=code, reason=reason[:100])))
            await linger(self._stream)
        raise TransportClosed(code)

    def _state(self) -> ConnectionState:
        return self._ws.state

    async def _send_bytes(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                if self._pending:  # the rest of a frame try_send began: it goes first
                    data, self._pending = self._pending + data, b""
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed() from exc


class WsprotoEndpoint:
    """Handshake, authenticate, then run one Session on the connection.

    Resource handling: the handshake (parsing, authentication, the 101) must
    finish within ``handshake_timeout_s`` of the end of the request head, or
    the connection is dropped. No exception raised while serving one
    connection leaves this call: a malformed upgrade is answered 400
    ``bad_request`` (whatever wsproto or h11 raised), anything unexpected is
    logged once with the connection id and the connection is closed (by the
    listener, which owns the socket). Trio's Cancelled passes through.
    """

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Any]],
        make_session: Callable[..., Any],
        max_message_bytes: int,
        origins: OriginPolicy | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self._authenticate = authenticate
        self._make_session = make_session
        self._max = max_message_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._origins = origins or OriginPolicy()

    async def __call__(self, stream: trio.abc.Stream, head: bytes) -> None:
        conn_id = next(_conn_ids)
        logs.bind_connection(conn_id)  # every line logged while serving it carries conn_id
        try:
            accepted = None
            with trio.move_on_after(self._handshake_timeout_s):
                accepted = await self._handshake(stream, head, conn_id)
            if accepted is None:
                return
            transport, fmt, principal = accepted
            await self._make_session(transport, fmt, principal).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed):
            pass
        except Exception:
            log.exception("ws conn %d failed; closing it", conn_id)

    async def _handshake(
        self, stream: trio.abc.Stream, head: bytes, conn_id: int
    ) -> tuple[WsprotoTransport, Any, Any] | None:
        """The transport, format and principal; None once refused (the answer is sent)."""
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
            if request is None:
                raise BadRequest("not a WebSocket upgrade request")
            path, _, query = request.target.partition("?")
            if path != WS_PATH:
                raise NotFound("no WebSocket endpoint at this path; use /v1/ws")
            scope = {
                "headers": [*request.extra_headers, (b"host", request.host.encode("utf-8"))],  # wsproto keeps Host apart
                "query_string": query.encode("latin-1", "replace"),
                "subprotocols": request.subprotocols,
            }
            chosen = pick_format(scope)
            if chosen is None:
                raise BadRequest("no supported subprotocol: use chatd.v1.json or chatd.v1.msgpack")
        except ChatdError as exc:
            await refuse(stream, exc)
            return None
        except Exception as exc:  # whatever h11/wsproto raise on a malformed head (UnicodeDecodeError...)
            log.debug("ws conn %d: malformed upgrade (%r)", conn_id, exc)
            await refuse(stream, BadRequest("malformed WebSocket upgrade request"))
            return None
        fmt, subprotocol = chosen
        try:
            self._origins.check_upgrade(scope)  # Forbidden: a page of another origin
            principal = await self._authenticate(bearer_token(scope))
        except ChatdError as exc:  # Unauthorized, or Unavailable while the store is down
            await refuse(stream, exc)
            return None
        try:
            answer = ws.send(AcceptConnection(subprotocol=subprotocol))
        except Exception as exc:  # wsproto refuses an answer the request does not allow
            log.debug("ws conn %d: cannot accept (%r)", conn_id, exc)
            await refuse(stream, BadRequest("malformed WebSocket upgrade request"))
            return None
        await stream.send_all(answer)
        # Keep only the frame-level connection: the handshake's h11 state is
        # several KiB per connection that an idle connection should not carry.
        assert ws.connection is not None
        return WsprotoTransport(stream, ws.connection, self._max), fmt, principal

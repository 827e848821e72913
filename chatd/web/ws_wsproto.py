"""``/v1/ws`` on a bare wsproto connection (the fast path; see chatd.web.listener).

The handshake, authentication and refusals mirror the ASGI handler in
:mod:`chatd.web.ws_endpoint` (they share its helpers), so a client cannot
tell the two paths apart. The transport enforces ``limits.max_frame_bytes``
per message (close 1009), answers pings, and sends many queued frames in one
socket write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from chatd.errors import BadRequest, ChatdError
from chatd.web.origins import OriginPolicy
from chatd.web.ws_endpoint import bearer_token, pick_format
from chatd.ws.session import TransportClosed

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
RECEIVE_BYTES = 65536


class WsprotoTransport:
    """The session's transport over a wsproto connection on a trio stream.

    Resource handling: one task receives, one sends (the session's reader
    and writer); pongs and close frames from the receiving side take the
    same send lock. The stream itself is closed by the listener.
    """

    __slots__ = ("_stream", "_ws", "_max", "_send_lock", "_parts", "_size", "_events", "_aborted")

    def __init__(self, stream: trio.abc.Stream, ws: Connection, max_message_bytes: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_bytes
        self._send_lock = trio.Lock()
        self._parts: list[Any] = []
        self._size = 0
        self._events: Iterator[Event] = iter(())
        self._aborted = False

    async def receive(self) -> str | bytes:
        while True:
            for event in self._events:
                if isinstance(event, Message):
                    data = event.data
                    self._size += len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
                    if self._size > self._max:
                        await self.close(CLOSE_TOO_BIG, "frame too large")
                        raise TransportClosed(CLOSE_TOO_BIG)
                    self._parts.append(data)
                    if event.message_finished:
                        whole: str | bytes = "".join(self._parts) if isinstance(data, str) else b"".join(self._parts)
                        self._parts, self._size = [], 0
                        return whole
                elif isinstance(event, Ping):
                    await self._send_bytes(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
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
        out = b"".join(
            self._ws.send(TextMessage(data=f) if isinstance(f, str) else BytesMessage(data=f)) for f in frames
        )
        await self._send_bytes(out)

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

    def _state(self) -> ConnectionState:
        return self._ws.state

    async def _send_bytes(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed() from exc


class WsprotoEndpoint:
    """Handshake, authenticate, then run one Session on the connection."""

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Any]],
        make_session: Callable[..., Any],
        max_message_bytes: int,
        origins: OriginPolicy | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._make_session = make_session
        self._max = max_message_bytes
        self._origins = origins or OriginPolicy()

    async def __call__(self, stream: trio.SocketStream, head: bytes) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError:
            request = None
        if request is None:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        _, _, query = request.target.partition("?")
        scope = {
            "headers": [*request.extra_headers, (b"host", request.host.encode("utf-8"))],  # wsproto keeps Host apart
            "query_string": query.encode("latin-1", "replace"),
            "subprotocols": request.subprotocols,
        }
        chosen = pick_format(scope)
        if chosen is None:
            await _refuse(stream, ws, BadRequest("no supported subprotocol: use chatd.v1.json or chatd.v1.msgpack"))
            return
        fmt, subprotocol = chosen
        try:
            self._origins.check_upgrade(scope)  # Forbidden: a page of another origin
            principal = await self._authenticate(bearer_token(scope))
        except ChatdError as exc:  # Unauthorized, or Unavailable while the store is down
            await _refuse(stream, ws, exc)
            return
        await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
        # Keep only the frame-level connection: the handshake's h11 state is
        # several KiB per connection that an idle connection should not carry.
        assert ws.connection is not None
        transport = WsprotoTransport(stream, ws.connection, self._max)
        del ws
        await self._make_session(transport, fmt, principal).run()


async def _refuse(stream: trio.abc.Stream, ws: WSConnection, error: ChatdError) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    data = ws.send(RejectConnection(status_code=error.status, headers=headers, has_body=True))
    data += ws.send(RejectData(data=body))
    await stream.send_all(data)

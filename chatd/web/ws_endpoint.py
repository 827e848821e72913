"""``GET /v1/ws`` as a plain ASGI handler, beside (not inside) the Quart app.

Since chatd's own listener (chatd.web.listener) sends fresh ``/v1/ws``
upgrades to the wsproto path, this handler serves the upgrades that arrive on
an HTTP keep-alive connection hypercorn already owns; both paths share the
handshake helpers below.

Quart's per-message WebSocket layers cost ~1.8x the CPU per frame and ~1.9x
the memory per connection (../shared/DESIGN.md), so the composition root
routes this one path straight here: hypercorn's wsproto stream, the ASGI
messages, and :class:`chatd.ws.session.Session`, nothing in between.

Authentication happens before the upgrade: a bad or missing token gets an
HTTP 401 with the contract's error body (hypercorn supports the
``websocket.http.response`` extension).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from chatd.errors import BadRequest, ChatdError
from chatd.web.origins import OriginPolicy
from chatd.wire.codec import WireFormat, choose_subprotocol
from chatd.ws.session import TransportClosed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AsgiTransport:
    """The session's transport over ASGI websocket messages."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._closed = False

    async def receive(self) -> str | bytes:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else message.get("bytes") or b""
        self._closed = True
        raise TransportClosed(message.get("code"))

    async def send(self, data: str | bytes) -> None:
        if self._closed:
            raise TransportClosed()
        message: dict[str, Any] = {"type": "websocket.send"}
        message["text" if isinstance(data, str) else "bytes"] = data
        try:
            await self._send(message)
        except Exception as exc:  # the server's own "connection gone" errors vary by version
            self._closed = True
            raise TransportClosed() from exc

    async def send_many(self, frames: Sequence[str | bytes]) -> None:
        for data in frames:
            await self.send(data)

    def abort(self) -> None:
        self._closed = True

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:
            raise TransportClosed() from exc


def bearer_token(scope: Scope) -> str | None:
    """The token from ``Authorization: Bearer`` or, for browsers, ``?token=``."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return str(token).strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return str(tokens[0]) if tokens else None


def offered_subprotocols(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols", ())]


async def refuse(send: Send, error: ChatdError) -> None:
    """Answer the upgrade request with an HTTP error in the contract's shape."""
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


def pick_format(scope: Scope) -> tuple[WireFormat, str | None] | None:
    """The wire format and the subprotocol to answer (None when none was offered)."""
    offered = offered_subprotocols(scope)
    fmt = choose_subprotocol(offered)
    if fmt is None:
        return None
    return fmt, (fmt.value if offered else None)


class WebSocketEndpoint:
    """Authenticates the upgrade, then runs one Session for the connection."""

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Any]],
        make_session: Callable[..., Any],
        origins: OriginPolicy | None = None,
    ) -> None:
        self._authenticate = authenticate
        self._make_session = make_session
        self._origins = origins or OriginPolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        chosen = pick_format(scope)
        if chosen is None:
            await refuse(send, BadRequest("no supported subprotocol: use chatd.v1.json or chatd.v1.msgpack"))
            return
        fmt, subprotocol = chosen
        try:
            self._origins.check_upgrade(scope)  # Forbidden: a page of another origin
            principal = await self._authenticate(bearer_token(scope))
        except ChatdError as exc:  # Unauthorized, or Unavailable while the store is down
            await refuse(send, exc)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        session = self._make_session(AsgiTransport(receive, send), fmt, principal)
        await session.run()

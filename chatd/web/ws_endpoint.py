"""The ``GET /v1/ws`` handshake decisions: token, subprotocol, refusal.

Every WebSocket upgrade, on a fresh connection or after requests on a
keep-alive HTTP connection (see :mod:`chatd.web.http_handoff`), is served by
the one wsproto endpoint in :mod:`chatd.web.ws_wsproto`: one implementation,
one set of limits (frame size enforced while reading, no compression). These
helpers are what it decides with; they only read the parsed request, given as
an ASGI-like ``scope`` (``headers``, ``query_string``, ``subprotocols``).

Authentication happens before the upgrade: a bad or missing token gets an
HTTP 401 with the contract's error body.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

import trio

from chatd.errors import ChatdError
from chatd.web.http_errors import error_answer
from chatd.wire.codec import WireFormat, choose_subprotocol

Scope = dict[str, Any]

log = logging.getLogger(__name__)


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


def refusal(error: ChatdError) -> bytes:
    """An HTTP error answer in the contract's shape; the connection closes after it."""
    return error_answer(error.status, error.code, error.message)


async def refuse(stream: trio.abc.SendStream, error: ChatdError) -> None:
    """Answer the upgrade request with an HTTP error in the contract's shape."""
    log.info("refused WebSocket upgrade: %d %s", error.status, error.code)
    await stream.send_all(refusal(error))


def pick_format(scope: Scope) -> tuple[WireFormat, str | None] | None:
    """The wire format and the subprotocol to answer (None when none was offered).

    The answer names a subprotocol only when the client offered exactly that
    token: ``Sec-WebSocket-Protocol: ,`` (nothing but empty entries) means
    JSON, answered without the header, as when the header is absent.
    """
    offered = offered_subprotocols(scope)
    fmt = choose_subprotocol(offered)
    if fmt is None:
        return None
    return fmt, (fmt.value if fmt.value in (p.strip() for p in offered) else None)


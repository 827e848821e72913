"""Error answers in the contract's shape, for every layer that writes HTTP itself.

Quart's routes (chatd.web.http_api), hypercorn's own refusals
(chatd.web.http_conn), the listener's answer to an oversized head and the
WebSocket endpoint's upgrade refusals all answer ``{"error": {"code",
"message"}}``; this module is where that body, and a whole raw answer, are made.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import trio

#: After refusing, how long and how much of what the client still sends is read
#: and dropped before closing (see :func:`linger`).
LINGER_S = 1.0
LINGER_MAX_BYTES = 1 << 20

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "bad_request",
               408: "bad_request", 409: "conflict", 413: "too_large", 415: "bad_request", 429: "rate_limited",
               431: "too_large", 500: "internal", 501: "bad_request", 503: "unavailable"}


def error_body(code: str, message: str) -> bytes:
    """The contract's error object, as the bytes of a response body."""
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def code_for_status(status: int) -> str:
    """The contract's error code for a status chatd did not choose itself (a protocol error)."""
    return _HTTP_CODES.get(status, "internal" if status >= 500 else "bad_request")


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def error_answer(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer with the JSON body and ``connection: close``."""
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {status_phrase(status)}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def linger(stream: trio.abc.ReceiveStream) -> None:
    """Read and drop what the peer still sends, until EOF, ``LINGER_S`` or ``LINGER_MAX_BYTES``.

    Closing a socket with unread bytes in it makes the kernel reset the
    connection, and the peer may lose the answer (or close frame) just sent;
    so a close for the peer's fault lingers, bounded in time and bytes.
    """
    dropped = 0
    with trio.move_on_after(LINGER_S):
        while dropped < LINGER_MAX_BYTES:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            dropped += len(chunk)

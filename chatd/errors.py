"""chatd's one exception tree.

Services raise these; the HTTP layer turns them into the contract's
``{"error": {"code", "message"}}`` with the matching status, the WebSocket
session into an ``error`` frame. Lower-layer errors (asyncpg, OS) are
translated once, at the storage boundary, into :class:`Unavailable`.
"""

from __future__ import annotations


class ChatdError(Exception):
    """An error a client may see: a contract code, an HTTP status, a message."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ChatdError):
    code, status = "bad_request", 400


class Invalid(ChatdError):
    code, status = "invalid", 400


class Unauthorized(ChatdError):
    code, status = "unauthorized", 401


class Forbidden(ChatdError):
    code, status = "forbidden", 403


class NotMember(ChatdError):
    code, status = "not_member", 403


class NotFound(ChatdError):
    code, status = "not_found", 404


class Conflict(ChatdError):
    code, status = "conflict", 409


class TooLarge(ChatdError):
    code, status = "too_large", 413


class RateLimited(ChatdError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ChatdError):
    """The store could not be reached or could not commit; nothing was stored."""

    code, status = "unavailable", 503


class StartupError(Exception):
    """The server cannot start for a reason the admin fixes in the configuration
    (a port in use, a host that does not resolve): one line naming the key."""

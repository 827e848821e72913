"""The HTTP endpoints of PROTOCOL §2 (login, me, users, channels, messages, sync, health).

A Quart (quart-trio) app: routes parse and validate, call a service, and
render the contract's JSON. Every error leaves as
``{"error": {"code", "message"}}`` with its status; an unexpected exception is
logged here and answered 500 without a traceback. :func:`json_errors` extends
that to the few failures Quart raises before its error handlers exist (a
``Host`` werkzeug cannot encode, a request target that is not a path).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestTimeout

from chatd.errors import BadRequest, ChatdError, Invalid, RateLimited, TooLarge, Unauthorized
from chatd.limits import ID_MAX
from chatd.models import Channel, Principal
from chatd.services.auth import AuthService
from chatd.services.channels import ChannelService
from chatd.services.inbox import InboxService
from chatd.services.messaging import MessageService
from chatd.services.presence import PresenceService
from chatd.services.receipts import ReceiptService
from chatd.services.users import UserService
from chatd.web import params
from chatd.web.http_errors import code_for_status, error_body
from chatd.web.origins import OriginPolicy

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_SYNC_TIMEOUT_MS = 60_000
SYNC_PAGE_MAX = 1000
#: ``GET /v1/presence?user_ids=``: at most as many ids as a ``presence_subscribe``.
MAX_PRESENCE_USER_IDS = 500
#: What a CORS preflight allows (every method and request header the API uses).
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = "600"


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(code, message),
        status=status,
        content_type="application/json",
        headers=headers or {},
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def ok(obj: Any, status: int = 200) -> Response:
    return Response(_json(obj), status=status, content_type="application/json")


def channel_json(channel: Channel) -> dict[str, Any]:
    """The contract's channel object: only ``GET /v1/channels/{id}`` adds ``members``."""
    out = channel.to_json()
    out.pop("members", None)
    return out


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_errors(app: Asgi) -> Asgi:
    """Wrap the HTTP app so that a failure before any answer still gets a JSON one.

    Quart builds its request context (host, path) before any error handler is
    registered, so a ``Host`` with a 64-character label or a target such as
    ``?/v1/login`` would escape as an exception, which hypercorn answers with an
    empty 500. A client error found there (werkzeug's ``BadHost``) is answered
    with its own status; anything else is logged and answered 500 ``internal``.
    """

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if not scope.get("path", "").startswith("/"):
            await _send_error(send, 400, "bad_request", "the request target must be a path")
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # too late for an answer: hypercorn logs it and closes the connection
            client_error = _client_error(exc)
            if client_error is not None and client_error.code is not None and client_error.code < 500:
                await _send_error(send, client_error.code, code_for_status(client_error.code),
                                  client_error.description or client_error.name)
            else:
                log.exception("unexpected error before an answer on %s %r", scope.get("method"), scope.get("path"))
                await _send_error(send, 500, "internal", "internal server error")

    return guarded


def _client_error(exc: BaseException) -> HTTPException | None:
    """The werkzeug HTTP error in ``exc``, looking inside (quart-trio's) exception groups and causes."""
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _client_error(inner)
            if found is not None:
                return found
    return None


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


def build_http_app(
    *,
    auth: AuthService,
    users: UserService,
    channels: ChannelService,
    messages: MessageService,
    inbox: InboxService,
    ready: Callable[[], Awaitable[bool]],
    receipts: ReceiptService | None = None,
    presence: PresenceService | None = None,
    max_group_members: int,
    origins: OriginPolicy | None = None,
    body_timeout_s: float = 30.0,
) -> QuartTrio:
    policy = origins or OriginPolicy()
    app = QuartTrio("chatd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # A body that has not fully arrived this long after the route asked for it: 408, then close.
    app.config["BODY_TIMEOUT"] = body_timeout_s
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.merge_slashes = False  # "/v1//me" is a 404 like any unknown path, not a redirect

    @app.after_request
    async def settle_body(response: Response) -> Response:
        """Take in what is left of the request body before answering.

        An answer sent while the client still sends its body (an early 401 or
        404) leaves the keep-alive connection stuck: the next request on it
        hangs. A body over the limit is never read: that connection closes.
        A body that already timed out (408) is not waited for a second time.
        """
        if g.get("body_timed_out", False):
            response.headers["Connection"] = "close"
            return response
        try:
            await request.get_data()
        except HTTPException:
            response.headers["Connection"] = "close"
        return response

    @app.before_request
    async def cors_preflight() -> Response | None:
        """Answer a browser's CORS preflight (``OPTIONS`` + ``Origin`` +
        ``Access-Control-Request-Method``) on an existing path: 204 with what
        the API allows for an allowed origin, 403 without CORS headers for
        any other. A plain ``OPTIONS`` stays 405."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        exc = request.routing_exception
        if exc is not None and not isinstance(exc, MethodNotAllowed):
            return None  # an unknown path: its 404
        if not policy.allows(origin, request.headers.get("Host")):
            return error_response("forbidden", "origin not allowed", 403)
        return Response(
            "",
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            },
        )

    @app.after_request
    async def cors_headers(response: Response) -> Response:
        """Let an allowed origin's page read the answer (errors included)."""
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is not None and policy.allows(origin, request.headers.get("Host")):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        return response

    @app.errorhandler(ChatdError)
    async def on_chatd_error(exc: ChatdError) -> Response:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return error_response(exc.code, exc.message, exc.status, headers)

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if isinstance(exc, RequestTimeout):
            g.body_timed_out = True
            return error_response("bad_request", "the request body did not arrive in time", 408,
                                  {"Connection": "close"})
        return error_response(code_for_status(status), exc.description or exc.name, status)

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response("internal", "internal server error", 500)

    def bearer() -> str:
        header = request.headers.get("Authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        return token.strip()

    async def principal() -> Principal:
        return await auth.authenticate(bearer())

    def client_address() -> str | None:
        """The socket's peer address: behind a reverse proxy, the proxy's
        (``X-Forwarded-For`` is not trusted: any client can send it)."""
        client = request.scope.get("client")
        return str(client[0]) if client else None

    async def body() -> Any:
        try:
            data = await request.get_json(force=True, silent=True)
            _json(data).encode("utf-8")  # a lone surrogate ("\ud800") is valid JSON but not text
        except (UnicodeError, RecursionError):  # not UTF-8; not text; nested too deep
            data = None
        if data is None:
            raise BadRequest("the body must be valid JSON")
        return params.body_object(data)

    def group_ids(value: Any, name: str) -> list[int]:
        """User ids for a group; more distinct ids than a group may hold is ``too_large``, not ``invalid``."""
        ids = params.id_list(value, name, MAX_BODY_BYTES)  # the body size bounds the list
        if len(set(ids)) > max_group_members:
            raise TooLarge(f"a group has at most {max_group_members} members")
        return ids

    @app.get("/healthz")
    async def healthz() -> Response:
        return ok({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if await ready():
            return ok({"status": "ready"})
        return error_response("unavailable", "database unreachable or migrations pending", 503)

    @app.post("/v1/login")
    async def login() -> Response:
        data = await body()
        username = params.string(data, "username", max_len=100)
        password = params.string(data, "password", max_len=1024)
        device_name = params.string(data, "device_name", max_len=100)
        assert username is not None and password is not None and device_name is not None
        token, user, device_id = await auth.login(username, password, device_name, client_address())
        return ok({"token": token, "user_id": user.user_id, "device_id": device_id})

    @app.post("/v1/logout")
    async def logout() -> Response:
        await auth.logout(await principal())
        return Response("", status=204)

    @app.get("/v1/me")
    async def me() -> Response:
        who = await principal()
        user = await users.get(who.user_id)
        return ok({**user.to_public(), "is_admin": user.is_admin})

    @app.get("/v1/users")
    async def search_users() -> Response:
        await principal()
        query = request.args.get("query", "")
        if len(query) > 100 or "\x00" in query:
            raise Invalid("query: at most 100 characters, no NUL")
        limit = params.query_int(request.args, "limit", default=50, low=1, high=200)
        assert limit is not None
        found = await users.search(query, limit)
        return ok({"users": [u.to_public() for u in found]})

    @app.post("/v1/channels")
    async def create_channel() -> Response:
        who = await principal()
        data = await body()
        kind = data.get("kind")
        if kind == "dm":
            members = params.id_list(data.get("members"), "members", 1)
            if len(members) != 1:
                raise Invalid("members: a direct message has exactly one other user")
            channel, created = await channels.open_dm(who, members[0])
            return ok(channel_json(channel), 201 if created else 200)
        if kind == "group":
            members = group_ids(data.get("members", []), "members")
            channel = await channels.create_group(who, data.get("name"), members)
            return ok(channel_json(channel), 201)
        raise Invalid('kind: "dm" or "group"')

    @app.get("/v1/channels")
    async def list_channels() -> Response:
        who = await principal()
        return ok({"channels": [c.to_json() for c in await channels.list(who)]})

    @app.get("/v1/channels/<raw_id>")
    async def get_channel(raw_id: str) -> Response:
        who = await principal()
        return ok((await channels.get(who, params.path_id(raw_id, "channel_id"))).to_json())

    @app.patch("/v1/channels/<raw_id>")
    async def rename_channel(raw_id: str) -> Response:
        who = await principal()
        data = await body()
        channel = await channels.rename(who, params.path_id(raw_id, "channel_id"), data.get("name"))
        return ok(channel_json(channel))

    @app.post("/v1/channels/<raw_id>/members")
    async def add_members(raw_id: str) -> Response:
        who = await principal()
        data = await body()
        user_ids = group_ids(data.get("user_ids"), "user_ids")
        if not user_ids:
            raise Invalid("user_ids: at least one user id")
        channel = await channels.add_members(who, params.path_id(raw_id, "channel_id"), user_ids)
        return ok(channel_json(channel))

    @app.delete("/v1/channels/<raw_id>/members/<raw_user>")
    async def remove_member(raw_id: str, raw_user: str) -> Response:
        who = await principal()
        await channels.remove_member(
            who, params.path_id(raw_id, "channel_id"), params.path_id(raw_user, "user_id")
        )
        return Response("", status=204)

    @app.get("/v1/channels/<raw_id>/messages")
    async def history(raw_id: str) -> Response:
        who = await principal()
        channel_id = params.path_id(raw_id, "channel_id")
        before = params.query_int(request.args, "before", default=None, low=0, high=ID_MAX)
        after = params.query_int(request.args, "after", default=None, low=0, high=ID_MAX)
        if before is not None and after is not None:
            raise Invalid("before and after: give one, not both")
        limit = params.query_int(request.args, "limit", default=50, low=1, high=200)
        assert limit is not None
        found = await messages.history(who, channel_id, before=before, after=after, limit=limit)
        return ok({"messages": [m.to_json() for m in found]})

    @app.post("/v1/channels/<raw_id>/messages")
    async def post_message(raw_id: str) -> Response:
        who = await principal()
        channel_id = params.path_id(raw_id, "channel_id")
        data = await body()
        client_msg_id = params.string(data, "client_msg_id", max_len=64)
        text = params.string(data, "text", max_len=1 << 20, allow_empty=True)
        media = data.get("media_ids")
        media_ids = [] if media is None else params.id_list(media, "media_ids", 10)
        assert client_msg_id is not None and text is not None
        ack = await messages.send(who, channel_id, client_msg_id, text, media_ids)
        return ok(ack.to_json(), 200 if ack.duplicate else 201)

    if receipts is not None:
        receipt_service = receipts

        @app.get("/v1/channels/<raw_id>/receipts")
        async def receipt_view(raw_id: str) -> Response:
            who = await principal()
            channel_id = params.path_id(raw_id, "channel_id")
            seq = params.query_int(request.args, "seq", default=None, low=0, high=ID_MAX)
            if seq is None:
                raise Invalid("seq: required")
            return ok((await receipt_service.view(who, channel_id, seq)).to_json())

        @app.post("/v1/channels/<raw_id>/receipts")
        async def post_receipt(raw_id: str) -> Response:
            who = await principal()
            channel_id = params.path_id(raw_id, "channel_id")
            data = await body()
            await receipt_service.post(who, channel_id, data.get("seq"), data.get("state"))
            return Response("", status=204)

    if presence is not None:
        presence_service = presence

        @app.get("/v1/presence")
        async def presence_view() -> Response:
            await principal()
            user_ids = params.id_csv(request.args.get("user_ids", ""), "user_ids", MAX_PRESENCE_USER_IDS)
            states = await presence_service.states(user_ids)
            return ok({"presence": [s.to_json() for s in states]})

    @app.get("/v1/sync")
    async def sync() -> Response:
        token = bearer()
        who = await auth.authenticate(token)
        after = params.query_int(request.args, "after", default=0, low=0, high=ID_MAX)
        limit = params.query_int(request.args, "limit", default=100, low=1, high=SYNC_PAGE_MAX)
        timeout_ms = params.query_int(request.args, "timeout_ms", default=0, low=0, high=MAX_SYNC_TIMEOUT_MS)
        assert after is not None and limit is not None and timeout_ms is not None
        events = await inbox.long_poll(who.user_id, after, limit, timeout_ms / 1000)
        if timeout_ms > 0:
            # The token may have been revoked (logout, user disabled, passwd)
            # while this poll waited: events committed since must not leave.
            await auth.authenticate(token)
        cursor = events[-1].inbox_seq if events else after
        return ok({"events": [e.to_json() for e in events], "cursor": cursor})

    return app

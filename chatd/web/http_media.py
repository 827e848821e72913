"""``POST /v1/media`` and ``GET``/``HEAD /v1/media/{id}`` (PROTOCOL §2), as a plain ASGI app.

Why not a Quart route: Quart's request body buffers whatever arrives, with
no backpressure (its size check applies to the buffer, not the total), so a
fast client uploading to a slower database would pile the file up in
memory. Here each ``receive()`` is taken only when the previous piece has been
handed on; hypercorn's bounded queue then stops reading the socket, and the
file passes through a few hundred KiB of memory whatever its size. Answers
are streamed the same way, one stored chunk at a time.

Downloads: ``ETag`` is the file's SHA-256 (content-addressed: the same
bytes, the same tag), ``If-None-Match`` gives 304, one ``Range`` gives 206
(several ranges: the whole file, 200, as RFC 9110 allows; past the end: 416).
Only an allow-list of types (images but SVG, audio, video, PDF) is served
inline with its own ``Content-Type``; anything else is
``application/octet-stream`` with ``Content-Disposition: attachment``, and
every answer says ``X-Content-Type-Options: nosniff`` and a sandboxing
``Content-Security-Policy``, so an uploaded HTML or SVG never runs as a page
of chatd's origin.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

import trio

from chatd import media_probe
from chatd.errors import BadRequest, ChatdError, NotFound, TooLarge, Unauthorized
from chatd.models import Principal, StoredMedia
from chatd.services.media import MediaService
from chatd.web import params
from chatd.web.http_errors import error_body
from chatd.web.origins import OriginPolicy

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX = "/v1/media"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ClientGone(Exception):
    """The client disconnected in the middle of its upload."""


class BodyTimeout(Exception):
    """The upload did not arrive within ``server.body_timeout_s``."""


class _Body:
    """The request's ``receive``, remembering whether the body ended.

    hypercorn (0.18) hands body pieces to an app through a bounded queue and
    puts ``http.disconnect`` in the same queue when the answer ends; an app
    that answers without reading the whole body (a 413 mid-upload) would
    leave both the connection's reader and its own last ``send`` waiting on a
    full queue forever. So such an answer runs with :meth:`drain` beside it,
    which drops what still arrives until that ``http.disconnect``.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.ended = False

    async def receive(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.ended = True
        return message

    async def drain(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass


def is_media_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name (a repeated one: the last)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class MediaHttp:
    """The ASGI app of the media endpoints; the server's dispatcher routes :func:`is_media_path` here."""

    def __init__(
        self,
        authenticate: Callable[[str | None], Awaitable[Principal]],
        media: MediaService,
        *,
        origins: OriginPolicy,
        body_timeout_s: float,
    ) -> None:
        self.authenticate = authenticate
        self.media = media
        self.origins = origins
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        cors = self._cors(headers)
        method, path = scope["method"], scope["path"]
        body = _Body(receive)
        async with trio.open_nursery() as nursery:
            try:
                if method == "OPTIONS" and "access-control-request-method" in headers and "origin" in headers:
                    await self._preflight(send, cors)
                elif path == PREFIX and method == "POST":
                    await self._upload(scope, headers, body, send, cors)
                elif path != PREFIX and method in ("GET", "HEAD"):
                    await self._download(scope, headers, send, cors)
                else:
                    nursery.start_soon(body.drain)
                    await _error(send, 405, "bad_request", "method not allowed", cors, close=True)
            except ChatdError as exc:
                # Refused before the whole body was read: the connection cannot be reused.
                nursery.start_soon(body.drain)
                await _error(send, exc.status, exc.code, exc.message, cors, close=method == "POST" and not body.ended)
            except BodyTimeout:
                nursery.start_soon(body.drain)
                await _error(send, 408, "bad_request", "the request body did not arrive in time", cors, close=True)
            except ClientGone:
                return

    # --- CORS --------------------------------------------------------------------

    def _cors(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        origin = headers.get("origin")
        out = [(b"vary", b"Origin")]
        if origin is not None and self.origins.allows(origin, headers.get("host")):
            out.append((b"access-control-allow-origin", origin.encode("latin-1")))
            out.append((b"access-control-expose-headers", b"Retry-After, ETag, Content-Range, Content-Disposition"))
        return out

    async def _preflight(self, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        if not any(k == b"access-control-allow-origin" for k, _ in cors):
            await _error(send, 403, "forbidden", "origin not allowed", [], close=False)
            return
        await _answer(send, 204, cors + [
            (b"access-control-allow-methods", b"GET, HEAD, POST"),
            (b"access-control-allow-headers", b"Authorization, Content-Type, Range, If-None-Match"),
            (b"access-control-max-age", b"600"),
        ])

    # --- upload ------------------------------------------------------------------

    async def _principal(self, headers: dict[str, str]) -> Principal:
        kind, _, token = headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        return await self.authenticate(token.strip())

    async def _upload(
        self, scope: Scope, headers: dict[str, str], request: _Body, send: Send, cors: list[tuple[bytes, bytes]]
    ) -> None:
        principal = await self._principal(headers)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.media.max_bytes:
            raise TooLarge(f"media: at most {self.media.max_bytes} bytes")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        raw_name = query.get("filename", [None])[-1]
        if raw_name is not None and len(raw_name) > 1024:
            raise BadRequest("filename: at most 1024 characters")
        deadline = trio.current_time() + self.body_timeout_s

        async def body() -> AsyncIterator[bytes]:
            while True:
                with trio.move_on_at(deadline) as waited:
                    message = await request.receive()
                if waited.cancelled_caught:
                    raise BodyTimeout()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                data = message.get("body", b"")
                if data:
                    yield data
                if not message.get("more_body", False):
                    return

        stored = await self.media.upload(principal, body(), headers.get("content-type"), raw_name)
        payload = json.dumps(stored.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
        await _answer(send, 201, cors + [(b"content-type", b"application/json")], payload)

    # --- download ----------------------------------------------------------------

    async def _download(
        self, scope: Scope, headers: dict[str, str], send: Send, cors: list[tuple[bytes, bytes]]
    ) -> None:
        raw_id = scope["path"][len(PREFIX) + 1:]
        try:
            media_id = params.path_id(raw_id, "media_id")
        except ChatdError:
            raise NotFound("no such media") from None
        principal = await self._principal(headers)
        media = await self.media.find(principal, media_id)
        etag = f'"{media.sha256.hex()}"'
        common = cors + _content_headers(media, scope) + [
            (b"etag", etag.encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"private, max-age=31536000, immutable"),
        ]
        if _matches(headers.get("if-none-match"), etag):
            await _answer(send, 304, common)
            return
        first, last, status = 0, media.size - 1, 200
        wanted = headers.get("range")
        if wanted is not None and (headers.get("if-range") in (None, etag)):
            span = _range(wanted, media.size)
            if isinstance(span, str):
                await _error(send, 416, "bad_request", "range not satisfiable", cors + [
                    (b"content-range", f"bytes */{media.size}".encode())], close=False)
                return
            if span is not None:
                first, last = span
                status = 206
                common.append((b"content-range", f"bytes {first}-{last}/{media.size}".encode()))
        length = max(0, last - first + 1)
        await send({"type": "http.response.start", "status": status,
                    "headers": common + [(b"content-length", str(length).encode())]})
        if scope["method"] == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        # The next chunk is read from the database while this one goes out (at most two ahead).
        out, into = trio.open_memory_channel[bytes](2)

        async def read_ahead() -> None:
            async with out:
                async for data in self.media.read(media, first, last):
                    await out.send(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            async with into:
                async for data in into:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _content_headers(media: StoredMedia, scope: Scope) -> list[tuple[bytes, bytes]]:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    name = media_probe.filename(query.get("filename", [None])[-1]) or media.filename
    inline = media_probe.is_inline(media.content_type)
    disposition = "inline" if inline else "attachment"
    if name is not None:
        ascii_name = name.encode("ascii", "replace").decode("ascii").replace("?", "_")
        disposition += f"; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
    out = [
        (b"content-type", (media.content_type if inline else "application/octet-stream").encode()),
        (b"content-disposition", disposition.encode("latin-1")),
        (b"x-content-type-options", b"nosniff"),
    ]
    if media.content_type != "application/pdf":  # a browser's PDF viewer does not run in a sandbox
        out.append((b"content-security-policy", b"default-src 'none'; sandbox"))
    return out


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` with our tag."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _range(header: str, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range as (first, last) inclusive; ``"unsatisfiable"``; or None (serve it all)."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges, another unit, or nonsense: the whole file
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:  # the last N bytes
        count = int(end)
        if count == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    first = int(start)
    last = size - 1 if not end else min(int(end), size - 1)
    if end and int(end) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, last


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]], *, close: bool
) -> None:
    headers = extra + [(b"content-type", b"application/json")]
    if close:
        headers.append((b"connection", b"close"))
    await _answer(send, status, headers, error_body(code, message))

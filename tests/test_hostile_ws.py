"""Hostile WebSocket clients over raw sockets: malformed handshakes, bad frames, memory bombs.

Every test runs the attack on both ways into the WebSocket endpoint: a fresh
connection (the listener hands the upgrade over directly) and a keep-alive
HTTP connection (an ordinary request first, then the upgrade on the same
socket). After each attack the server must still serve a normal client.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from chatd.web.ws_wsproto import WsprotoEndpoint
from tests.support import RunningServer, running_server, ws_client

PATHS = ["fresh", "keep-alive"]
KEY = base64.b64encode(b"0123456789abcdef")
MiB = 1 << 20


def upgrade_head(
    token: str | None = None,
    *,
    target: bytes = b"/v1/ws",
    extra: list[tuple[bytes, bytes]] | None = None,
    drop: tuple[bytes, ...] = (),
) -> bytes:
    headers = [
        (b"Host", b"127.0.0.1"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", KEY),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    if token is not None:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    headers = [(n, v) for n, v in headers if n.lower() not in {d.lower() for d in drop}]
    headers += extra or []
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"


class Response:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes, rest: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.rest = rest  # bytes after the response (WebSocket frames after a 101)

    def error(self) -> dict[str, Any]:
        assert self.headers.get(b"content-type") == b"application/json", self.headers
        data = json.loads(self.body)
        assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}, data
        assert isinstance(data["error"]["message"], str)
        return dict(data["error"])


async def read_response(stream: trio.SocketStream, timeout: float = 10) -> Response:
    """One well-formed HTTP/1.1 response (asserts its shape), body read by content-length."""
    data = b""
    with trio.fail_after(timeout):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed without a complete response: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        line, *lines = head.split(b"\r\n")
        version, status, *_ = line.split(b" ", 2)
        assert version == b"HTTP/1.1" and status.isdigit(), line
        headers = {}
        for h in lines:
            name, sep, value = h.partition(b":")
            assert sep, h
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed inside the body"
            rest += chunk
    return Response(int(status), headers, rest[:length], rest[length:])


@asynccontextmanager
async def open_raw(srv: RunningServer, path: str) -> AsyncIterator[trio.SocketStream]:
    """A socket ready for an upgrade request: fresh, or after a completed /healthz request."""
    host, port = srv.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        if path == "keep-alive":
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            response = await read_response(stream)
            assert response.status == 200 and b"ok" in response.body
        yield stream


@asynccontextmanager
async def upgraded(srv: RunningServer, path: str, head: bytes) -> AsyncIterator[tuple[trio.SocketStream, Response]]:
    async with open_raw(srv, path) as stream:
        await stream.send_all(head)
        response = await read_response(stream)
        yield stream, response


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    """A frame as a client sends it; ``length`` may announce more than ``payload``."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if n < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def close_code(stream: trio.SocketStream, already: bytes = b"", timeout: float = 10) -> int | None:
    """Read server frames until its close frame; its code (None: the socket ended without one)."""
    ws = Connection(ConnectionType.CLIENT)
    ws.receive_data(already)
    with trio.fail_after(timeout):
        while True:
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    return event.code
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            ws.receive_data(data)


async def first_text(stream: trio.SocketStream, already: bytes) -> Any:
    """The first text message after the 101 (``already``: bytes read past its head), decoded."""
    ws = Connection(ConnectionType.CLIENT)
    ws.receive_data(already)
    with trio.fail_after(10):
        while True:
            texts = [e.data for e in ws.events() if isinstance(e, TextMessage)]
            if texts:
                return json.loads(texts[0])
            ws.receive_data(await stream.receive_some(65536))


async def assert_still_serving(srv: RunningServer, token: str) -> None:
    """A normal client still gets welcome and completes a sync."""
    async with ws_client(srv, token) as client:
        events, _cursor = await client.sync(0)
        assert isinstance(events, list)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def deflate_bomb(zeros: int) -> bytes:
    """Raw-deflate (as permessage-deflate sends it) of ``zeros`` zero bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MiB)
    out = [comp.compress(block) for _ in range(zeros // MiB)]
    out.append(comp.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(out)[:-4]  # permessage-deflate drops the 00 00 ff ff tail


# --- finding 2: malformed handshakes ----------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("header", [b"Host", b"Connection", b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions"])
async def test_non_ascii_handshake_header_is_answered_400(db_url: str, path: str, header: bytes) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        value = b"Upgrade, \xff\xfe" if header == b"Connection" else b"chatd.v1.json\xc3\x28\xff"
        head = upgrade_head(alice.token, drop=(header,), extra=[(header, value)])
        async with upgraded(srv, path, head) as (_stream, response):
            assert response.status == 400
            assert response.error()["code"] == "bad_request"
        await assert_still_serving(srv, alice.token)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("offer", [b",", b"", b" , ,"])
async def test_empty_subprotocol_offer_is_json_without_answering_one(db_url: str, path: str, offer: bytes) -> None:
    """The answer never names a subprotocol the client did not offer (wsproto would raise)."""
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        head = upgrade_head(alice.token, extra=[(b"Sec-WebSocket-Protocol", offer)])
        async with upgraded(srv, path, head) as (stream, response):
            assert response.status == 101
            assert b"sec-websocket-protocol" not in response.headers
            assert (await first_text(stream, response.rest))["type"] == "welcome"
        await assert_still_serving(srv, alice.token)


@pytest.mark.parametrize("path", PATHS)
async def test_refusals_have_the_contract_body_on_both_paths(db_url: str, path: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        cases: list[tuple[bytes, int, str]] = [
            (upgrade_head(), 401, "unauthorized"),
            (upgrade_head("not-a-token"), 401, "unauthorized"),
            (upgrade_head(alice.token, extra=[(b"Sec-WebSocket-Protocol", b"other.v1")]), 400, "bad_request"),
            (upgrade_head(alice.token, drop=(b"Sec-WebSocket-Key",)), 400, "bad_request"),
            (upgrade_head(alice.token, drop=(b"Connection",)), 400, "bad_request"),
            (upgrade_head(alice.token, target=b"/v1/other"), 404, "not_found"),
        ]
        for head, status, code in cases:
            async with upgraded(srv, path, head) as (_stream, response):
                assert (response.status, response.error()["code"]) == (status, code), head
        await assert_still_serving(srv, alice.token)


@pytest.mark.parametrize(
    "before",
    [
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /v1/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}",
        b"POST /v1/login HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
)
async def test_upgrade_pipelined_behind_a_request_waits_for_its_answer(db_url: str, before: bytes) -> None:
    """Sent in one write, the request is answered first, then the same socket is upgraded."""
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        host, port = srv.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(before + upgrade_head(alice.token))
            first = await read_response(stream)
            assert first.status in {200, 400, 401, 422}, first.status  # whatever the HTTP API says
            assert first.rest == b"" or first.rest.startswith(b"HTTP/1.1 101")
            # The rest of the stream is the 101 and the welcome.
            pending = first.rest
            with trio.fail_after(10):
                while b"\r\n\r\n" not in pending:
                    pending += await stream.receive_some(65536)
            assert pending.startswith(b"HTTP/1.1 101"), pending
            assert (await first_text(stream, pending.partition(b"\r\n\r\n")[2]))["type"] == "welcome"


async def test_upgrade_trickled_on_a_keep_alive_connection(db_url: str) -> None:
    """An upgrade head arriving a few bytes at a time is held until whole, then served."""
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with open_raw(srv, "keep-alive") as stream:
            head = upgrade_head(alice.token)
            for i in range(0, len(head), 7):
                await stream.send_all(head[i : i + 7])
            response = await read_response(stream)
            assert response.status == 101


# --- finding 3: frame size and compression bombs ----------------------------------------


async def _flood(stream: trio.SocketStream, first: bytes, rest: bytes, total: int) -> tuple[int | None, float]:
    """Send ``first``, then ``rest`` repeated up to ``total`` bytes whatever the server says
    (until it drops the socket), while reading: its close code and how long it took to come."""
    code: int | None = None
    took = float("inf")
    start = trio.current_time()

    async def sender() -> None:
        try:
            await stream.send_all(first)
            sent = 0
            while sent < total:
                await stream.send_all(rest)
                sent += len(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server dropped the connection: expected

    async def reader() -> None:
        nonlocal code, took
        code = await close_code(stream, timeout=60)
        took = trio.current_time() - start

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(reader)
    return code, took


@pytest.mark.parametrize("path", PATHS)
async def test_huge_frame_is_refused_while_read_not_after(db_url: str, path: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with upgraded(srv, path, upgrade_head(alice.token)) as (stream, response):
            assert response.status == 101
            before = rss_bytes()
            # A binary frame announcing 300 MiB, then its (masked) payload streamed.
            header = client_frame(0x2, b"", length=300 * MiB)  # header and mask key, no payload yet
            code, took = await _flood(stream, header, bytes(64 * 1024), 300 * MiB)
            grown = rss_bytes() - before
        assert code == 1009
        assert took < 20, took  # at the first bytes past the limit, not after the frame
        assert grown < 8 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"
        await assert_still_serving(srv, alice.token)


BOMB = deflate_bomb(200 * MiB)


@pytest.mark.parametrize("path", PATHS)
async def test_compression_is_never_negotiated_and_a_deflate_bomb_is_refused(db_url: str, path: str) -> None:
    assert len(BOMB) < 300 * 1024
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        head = upgrade_head(
            alice.token, extra=[(b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits")]
        )
        async with trio.open_nursery() as nursery:
            before = rss_bytes()
            codes: list[int | None] = []

            async def one() -> None:
                async with upgraded(srv, path, head) as (stream, response):
                    assert response.status == 101
                    assert b"sec-websocket-extensions" not in response.headers
                    # RSV1 marks a compressed message: not allowed without the extension.
                    code, _took = await _flood(stream, client_frame(0x2, BOMB, rsv=4), b"", 0)
                    codes.append(code)

            for _ in range(8):
                nursery.start_soon(one)
        grown = rss_bytes() - before
        assert codes == [1002] * 8
        assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"
        await assert_still_serving(srv, alice.token)


# --- finding 11: protocol violations close with RFC 6455's codes ------------------------


VIOLATIONS = {
    "invalid utf-8 text": (client_frame(0x1, b'{"type":"ping"\xff\xfe}'), 1007),
    "unmasked frame": (client_frame(0x1, b'{"type":"ping"}', mask=False), 1002),
    "rsv bits without extension": (client_frame(0x1, b'{"type":"ping"}', rsv=2), 1002),
    "reserved opcode": (client_frame(0x3, b"x"), 1002),
    "fragmented ping": (client_frame(0x9, b"x", fin=False), 1002),
    "oversize ping": (client_frame(0x9, bytes(200)), 1002),
    "continuation without start": (client_frame(0x0, b"x"), 1002),
}


@pytest.mark.parametrize("path", PATHS)
async def test_protocol_violations_close_with_rfc_codes(db_url: str, path: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        for name, (frame, expected) in VIOLATIONS.items():
            async with upgraded(srv, path, upgrade_head(alice.token)) as (stream, response):
                assert response.status == 101
                await stream.send_all(frame)
                assert await close_code(stream, response.rest) == expected, name
        await assert_still_serving(srv, alice.token)


# --- handshake timeout ------------------------------------------------------------------


async def test_handshake_must_finish_within_its_bound() -> None:
    """A handshake stuck in authentication (a store that never answers) is dropped in time."""
    stuck = trio.Event()

    async def authenticate(_token: str | None) -> Any:
        stuck.set()
        await trio.sleep_forever()

    def make_session(*_args: Any) -> Any:
        raise AssertionError("never reached")

    endpoint = WsprotoEndpoint(authenticate, make_session, 65536, handshake_timeout_s=0.5)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await endpoint(stream, upgrade_head("token"))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            start = trio.current_time()
            with trio.fail_after(10):
                assert await client.receive_some(1024) == b""  # closed without an answer
            assert stuck.is_set()
            assert trio.current_time() - start >= 0.4
        nursery.cancel_scope.cancel()


async def test_no_exception_leaves_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error while serving one connection is logged once with its id; the connection closes."""

    async def authenticate(_token: str | None) -> Any:
        raise RuntimeError("boom")

    def make_session(*_args: Any) -> Any:
        raise AssertionError("never reached")

    endpoint = WsprotoEndpoint(authenticate, make_session, 65536)
    served_send, served = trio.open_memory_channel[str](2)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await endpoint(stream, upgrade_head("token"))  # raising here would end serve_tcp's nursery
            await served_send.send("returned")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        for _ in range(2):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                with trio.fail_after(10):
                    assert await client.receive_some(1024) == b""
        with trio.fail_after(10):
            assert [await served.receive(), await served.receive()] == ["returned", "returned"]
        nursery.cancel_scope.cancel()
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ws conn") and r.exc_info]
    assert len(failures) == 2 and len(set(failures)) == 2, failures  # once each, with distinct ids
    assert all(m.endswith("failed; closing it") for m in failures)


# --- fuzz ---------------------------------------------------------------------------------


def _mutate(rng: random.Random, token: str) -> bytes:
    def junk(n: int) -> bytes:
        alphabet = [bytes([b]) for b in range(256) if b not in (0x0A, 0x0D)]
        return b"".join(rng.choice(alphabet) for _ in range(n))

    headers: list[tuple[bytes, bytes]] = [
        (b"Host", b"127.0.0.1"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", KEY),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    if rng.random() < 0.5:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    if rng.random() < 0.5:
        headers.append((b"Sec-WebSocket-Protocol", rng.choice([b"chatd.v1.json", b"chatd.v1.msgpack", b"x"])))
    odd_values = [
        b"", b",", b" , ,", b"\xff", b"\xc3\x28", b"chatd.v1.json,\xfe", b"13, 8", b"0" * 200,
        b"permessage-deflate; client_max_window_bits=\xff", b"upgrade\x80", b"=\x00=", b"x" * 5000,
    ]
    names = [b"Host", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol",
             b"Sec-WebSocket-Extensions", b"Authorization", b"Origin"]
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and headers:  # drop one
            headers.pop(rng.randrange(len(headers)))
        elif op == 1 and headers:  # duplicate one
            headers.append(rng.choice(headers))
        elif op == 2:  # odd value for a handshake header
            headers.append((rng.choice(names), rng.choice(odd_values)))
        elif op == 3:  # random bytes in a value
            headers.append((rng.choice(names), junk(rng.randint(1, 40))))
        elif op == 4:  # random bytes in a name
            headers.append((junk(rng.randint(1, 12)), junk(rng.randint(0, 12))))
        elif op == 5 and headers:  # flip bytes in an existing value
            i = rng.randrange(len(headers))
            name, value = headers[i]
            flipped = bytearray(value or b"x")
            flipped[rng.randrange(len(flipped))] = rng.choice([b for b in range(256) if b not in (0x0A, 0x0D)])
            headers[i] = (name, bytes(flipped))
    headers.insert(rng.randrange(len(headers) + 1), (b"Upgrade", b"websocket"))
    target = b"/v1/ws" + (b"?" + junk(rng.randint(0, 8)).replace(b" ", b"") if rng.random() < 0.2 else b"")
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"


async def test_fuzzed_upgrade_heads_never_hurt_the_server(db_url: str) -> None:
    rng = random.Random(20260411)
    cases = 2000
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        heads = [(_mutate(rng, alice.token), rng.choice(PATHS)) for _ in range(cases)]
        statuses: dict[int, int] = {}

        async def one(head: bytes, path: str) -> None:
            async with open_raw(srv, path) as stream:
                await stream.send_all(head)
                response = await read_response(stream)
                if response.status != 101:
                    assert 400 <= response.status < 500, (head, response.status)
                    assert response.error()["code"] in {"bad_request", "unauthorized", "not_found", "forbidden"}, head
                    assert response.headers.get(b"connection") == b"close"
                statuses[response.status] = statuses.get(response.status, 0) + 1

        limiter = trio.CapacityLimiter(16)

        async def bounded(head: bytes, path: str) -> None:
            async with limiter:
                await one(head, path)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for head, path in heads:
                    nursery.start_soon(bounded, head, path)
        assert sum(statuses.values()) == cases
        assert statuses.get(101, 0) > 0 and statuses.get(400, 0) > 0, statuses
        await assert_still_serving(srv, alice.token)
        host, port = srv.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_response(stream)).status == 200

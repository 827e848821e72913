"""Hostile HTTP clients over raw sockets: no connection may stop the node or hold it forever.

Each test runs a real server (in-process, port 0, real PostgreSQL) with short
timeouts, so a slow client is dealt with in about a second rather than ten.
Answers are parsed with h11 as a client would; every error must carry the
contract's JSON body.
"""

from __future__ import annotations

import json
import logging
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from chatd.web import listener
from chatd.web.http_conn import SendBounded, Timeouts
from tests.processes import serving
from tests.support import RunningServer, running_server

HEAD_S = 1.0
BODY_S = 2.5
KEEPALIVE_S = 2.0
FAST = {"server": {"head_timeout_s": HEAD_S, "body_timeout_s": BODY_S, "keepalive_timeout_s": KEEPALIVE_S}}
#: Far more than any timeout above, for a noisy machine: a test waits this long at most.
PATIENCE_S = 15.0


@attrs.frozen
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The contract's error object, checking the shape on the way."""
        assert self.headers.get(b"content-type") == b"application/json", self
        data = json.loads(self.body)
        assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}, data
        assert isinstance(data["error"]["code"], str) and isinstance(data["error"]["message"], str)
        return dict(data["error"])


def has_complete_answer(data: bytes) -> bool:
    """Whether ``data`` holds at least one whole HTTP response (a 101 counts once its head is in)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, (h11.EndOfMessage, h11.InformationalResponse)):
                return True
    except h11.RemoteProtocolError:
        return True  # not a response at all: parse_answers will say so


def parse_answers(data: bytes, *, first_only: bool = False) -> list[Answer]:
    """Every HTTP/1.1 response in ``data`` (a whole connection's bytes); raises if one is malformed."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    answers: list[Answer] = []
    if not data:
        return answers
    while True:
        if conn.our_state is h11.IDLE:
            if answers and not conn.trailing_data[0]:
                return answers  # nothing after the last complete answer
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status, headers, body = event.status_code, {k: v for k, v in event.headers}, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            answers.append(Answer(status, headers, body))
            if first_only:
                return answers
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return answers  # the server said it closes: nothing may follow
        elif isinstance(event, h11.ConnectionClosed):
            return answers
        else:
            raise AssertionError(f"unexpected {event!r} after {answers!r}")


async def connect(srv: RunningServer) -> trio.SocketStream:
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_to_close(stream: trio.SocketStream, patience: float = PATIENCE_S) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    data = b""
    with trio.fail_after(patience):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset by the server: closed as well
                return data
            if not chunk:
                return data
            data += chunk


async def exchange(srv: RunningServer, request: bytes, *, eof: bool = True) -> bytes:
    """Send ``request`` on a fresh connection (then half-close) and read until the server closes."""
    stream = await connect(srv)
    async with stream:
        try:
            await stream.send_all(request)
            if eof:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass  # the server answered and closed before taking everything
        return await read_to_close(stream)


async def fuzz_exchange(srv: RunningServer, request: bytes) -> bytes:
    """Send one case; read until the first whole answer or the close.

    A case without a complete head is half-closed after sending, so h11 sees
    it end at once; a complete one is not (hypercorn drops the answers of a
    half-closed connection), and its keep-alive connection is closed here.
    """
    stream = await connect(srv)
    data = b""
    async with stream:
        try:
            await stream.send_all(request)
            if b"\r\n\r\n" not in request:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(PATIENCE_S):
            while not has_complete_answer(data):
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                data += chunk
    return data


async def healthz(srv: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=srv.url, timeout=PATIENCE_S) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@asynccontextmanager
async def fast_server(db_url: str) -> AsyncIterator[RunningServer]:
    async with running_server(db_url, FAST) as srv:
        yield srv


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


# --- finding 1: a silent or half-sent head ---------------------------------------------


async def test_silent_and_half_head_connections_are_closed_and_the_node_keeps_serving(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        silent = await connect(srv)
        half = await connect(srv)
        await half.send_all(b"GET /healthz HTTP/1.1\r\nHo")
        await healthz(srv)  # served while both hang
        start = trio.current_time()
        assert await read_to_close(silent) == b""  # closed without an answer
        assert await read_to_close(half) == b""
        assert trio.current_time() - start >= HEAD_S * 0.5  # by the head timeout, not at once
        await silent.aclose()
        await half.aclose()
        await healthz(srv)  # the node lives on (the head timeout used to stop it)


async def test_chatd_serve_outlives_a_silent_connection(db_url: str, tmp_path: Path) -> None:
    """The original report: ``chatd serve`` exited 1 when a silent socket hit the head timeout."""
    async with serving(tmp_path, db_url, {"CHATD_SERVER_HEAD_TIMEOUT_S": str(HEAD_S)}) as proc:
        srv = RunningServer(proc.url, None)  # type: ignore[arg-type]
        silent = await connect(srv)
        async with silent:
            assert await read_to_close(silent) == b""
        await healthz(srv)
        assert proc.proc.returncode is None
        rc, _took = await proc.stop(signal.SIGTERM, within=30)
        assert rc == 0, proc.stderr()
        assert "Traceback" not in proc.stderr()


async def test_an_exception_in_one_connection_is_logged_and_stays_there(caplog: pytest.LogCaptureFixture) -> None:
    """The rule of the house, on the listener alone: a handler that raises closes only its connection."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def broken_ws(stream: trio.SocketStream, head: bytes) -> None:
        raise RuntimeError("a bug in the WebSocket handler")

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: listener.serve(
                app, HypercornConfig(), broken_ws, host="127.0.0.1", port=0, shutdown_trigger=stop.wait,
                timeouts=Timeouts(head_s=HEAD_S), task_status=task_status,
            )
        )
        srv = RunningServer(url, None)  # type: ignore[arg-type]
        upgrade = b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        with caplog.at_level(logging.ERROR, logger="chatd.web.listener"):
            for _ in range(3):
                assert await exchange(srv, upgrade) == b""  # that connection is closed...
                answers = parse_answers(await exchange(srv, GET_HEALTHZ))
                assert [a.status for a in answers] == [200]  # ...and the others are served
        failures = [r for r in caplog.records if "failed; closing it" in r.getMessage()]
        assert len(failures) == 3 and all(r.exc_info for r in failures)
        assert len({r.getMessage() for r in failures}) == 3  # each names its own connection
        stop.set()


# --- finding 6: a stalled body, a partial second request, idle keep-alive --------------


async def test_a_stalled_body_gets_one_408_then_the_socket_closes(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        start = trio.current_time()
        request = b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        answers = parse_answers(await exchange(srv, request, eof=False))
        elapsed = trio.current_time() - start
        assert [a.status for a in answers] == [408]
        assert answers[0].headers.get(b"connection") == b"close"
        assert answers[0].error()["code"] == "bad_request"
        assert elapsed < 2 * BODY_S  # once, not twice (it used to wait for the body again)
        await healthz(srv)


async def test_a_partial_second_request_on_keep_alive_is_closed(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        stream = await connect(srv)
        async with stream:
            await stream.send_all(GET_HEALTHZ + b"GET /healthz HTTP/1.1\r\nHo")
            data = await read_to_close(stream)
        assert [a.status for a in parse_answers(data)] == [200]

        stream = await connect(srv)  # the partial head arriving after the first answer
        async with stream:
            await stream.send_all(GET_HEALTHZ)
            first = b""
            with trio.fail_after(PATIENCE_S):
                while b'{"status":"ok"}' not in first:
                    first += await stream.receive_some(65536)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHo")
            assert await read_to_close(stream) == b""
        await healthz(srv)


async def test_an_idle_keep_alive_connection_is_closed(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        stream = await connect(srv)
        async with stream:
            await stream.send_all(GET_HEALTHZ)
            data = await read_to_close(stream)  # answered, then closed once idle
        assert [a.status for a in parse_answers(data)] == [200]


async def test_connection_close_is_honoured_at_once(db_url: str) -> None:
    """A client that asks for ``Connection: close`` and then just waits is closed after
    its answer, well before the keep-alive timeout (it cannot hold a socket forever)."""
    async with running_server(db_url, {"server": {"keepalive_timeout_s": 60.0}}) as srv:
        stream = await connect(srv)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await read_to_close(stream, patience=10.0)
        (answer,) = parse_answers(data)
        assert answer.status == 200 and answer.headers.get(b"connection") == b"close"


async def test_keep_alive_still_serves_several_requests(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        stream = await connect(srv)
        async with stream:
            await stream.send_all(GET_HEALTHZ * 3)
            answers = parse_answers(await read_to_close(stream))  # closed when idle
        assert [a.status for a in answers] == [200, 200, 200]


async def test_many_slowloris_sockets_do_not_stop_healthz(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        streams = []
        for i in range(120):
            stream = await connect(srv)
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nX-Slow: " + str(i).encode())
            streams.append(stream)
        for _ in range(5):
            await healthz(srv)
        for stream in streams:
            assert await read_to_close(stream) == b""
            await stream.aclose()
        await healthz(srv)


async def test_an_answer_the_client_does_not_read_closes_the_connection() -> None:
    """hypercorn writes in a shielded scope; SendBounded's deadline is what ends such a write."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            bounded = SendBounded(await listeners[0].accept(), b"GET", send_s=0.5)
            assert await bounded.receive_some() == b"GET"  # the head read already comes first
            with trio.fail_after(PATIENCE_S), pytest.raises(trio.BrokenResourceError):
                with trio.CancelScope(shield=True):  # as hypercorn writes
                    for _ in range(1000):
                        await bounded.send_all(b"x" * 1_000_000)
            with pytest.raises(trio.ClosedResourceError):
                await bounded.receive_some()  # the socket is closed


# --- finding 10: protocol-level errors answered as JSON -------------------------------

WS_HEADERS = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: " + b"a" * 64 + b".example\r\n\r\n", 400, "bad_request"),
        (b"POST ?/v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_request"),
        (b"GET /v1/wsx HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n", 404, "not_found"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/wsx HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n",
         404, "not_found"),
    ],
    ids=["garbage", "huge-head", "unknown-coding", "long-host-label", "target-not-a-path", "ws-wrong-path",
         "ws-wrong-path-keep-alive"],
)
async def test_protocol_errors_have_the_json_shape(db_url: str, request_bytes: bytes, status: int, code: str) -> None:
    async with fast_server(db_url) as srv:
        answers = parse_answers(await exchange(srv, request_bytes, eof=False))
        assert answers[-1].status == status, answers
        assert answers[-1].error()["code"] == code
        await healthz(srv)


# --- finding 12: Content-Length and Transfer-Encoding together -----------------------


async def test_content_length_with_transfer_encoding_is_refused_and_closed(db_url: str) -> None:
    async with fast_server(db_url) as srv:
        request = (
            b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + GET_HEALTHZ
        )
        answers = parse_answers(await exchange(srv, request, eof=False))
        assert [a.status for a in answers] == [400]  # the pipelined request is not answered
        assert answers[0].headers.get(b"connection") == b"close"
        assert answers[0].error()["code"] == "bad_request"
        # The same behind a first request on a keep-alive connection.
        answers = parse_answers(await exchange(srv, GET_HEALTHZ + request, eof=False))
        assert [a.status for a in answers] == [200, 400]


# --- fuzz: mutated request heads against one server ----------------------------------

SEEDS = [
    GET_HEALTHZ,
    b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\nConnection: keep-alive\r\n\r\n",
    b"POST /v1/channels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /v1/wsx HTTP/1.1\r\nHost: x\r\n" + WS_HEADERS + b"\r\n",
    b"GET /readyz?x=1 HTTP/1.0\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b":", b" ", b"\t", b"\xff", b"%", b"?", b"/", b"HTTP/1.1", b"HTTP/2.0",
    b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"Upgrade: h2c\r\n",
    b"Connection: Upgrade, HTTP2-Settings\r\n", b"Expect: 100-continue\r\n", b"Host: " + b"b" * 70 + b"\r\n",
    b"Host: [::1\r\n", b"\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"a" * 300,
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del out[at:at + rng.randint(1, 16)]
        elif op == 3:
            end = min(len(out), at + rng.randint(1, 32))
            out[at:at] = out[at:end] * rng.randint(1, 4)
        elif op == 4:
            out = out[:at]
        else:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


FUZZ_CASES = 2500
FUZZ_PARALLEL = 25


async def test_fuzzed_request_heads_never_break_the_node(db_url: str) -> None:
    rng = random.Random(20261130)
    cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(FUZZ_CASES)]
    problems: list[str] = []
    async with fast_server(db_url) as srv:
        send_cases, receive_cases = trio.open_memory_channel[bytes](FUZZ_PARALLEL)

        async def worker() -> None:
            async for case in receive_cases:
                try:
                    data = await fuzz_exchange(srv, case)
                    if data.startswith(b"HTTP/1.1 101"):
                        continue  # an upgrade the mutation did not break
                    answers = parse_answers(data, first_only=True)
                    assert answers or data == b"", data  # bytes that are no answer at all
                except Exception as exc:  # collected, to report the case
                    problems.append(f"{case!r}: {exc!r}")
                    continue
                for answer in answers:
                    if b"Traceback" in answer.body:
                        problems.append(f"{case!r}: traceback in {answer!r}")
                    if answer.status >= 400:
                        try:
                            answer.error()
                        except Exception as exc:
                            problems.append(f"{case!r}: not the error shape: {answer!r} ({exc!r})")

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(FUZZ_PARALLEL):
                    nursery.start_soon(worker)
                async with send_cases:
                    for case in cases:
                        await send_cases.send(case)
        await healthz(srv)
    assert not problems, f"{len(problems)} bad cases, e.g.:\n" + "\n".join(problems[:10])

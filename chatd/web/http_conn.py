"""One HTTP/1.1 connection: hypercorn's per-connection server with a deadline for every phase.

Hypercorn's ``TCPServer`` (0.18) bounds only the idle time between requests
(``keep_alive_timeout``), and that timer keeps running while the next request
head trickles in, so there is no bound of its own on a slow head; a body that
stalls is left to the framework. chatd serves an open port, so
:class:`HttpConnection` gives every read a deadline that depends on where the
connection is:

=========  ====================================  ===========================
phase      from                                  deadline
=========  ====================================  ===========================
idle       the end of the previous answer        ``keepalive_s``
head       the first byte of a request           ``head_s``
body       the end of the request head           ``body_s`` + grace (backstop)
answering  the request complete                  none (e.g. a long-poll)
=========  ====================================  ===========================

A read past its deadline closes the connection. The body phase's answer is
the application's: Quart's ``BODY_TIMEOUT`` (the same ``body_s``) answers 408
with ``connection: close``; the transport deadline only closes a connection
whose 408 could not go out. Writes are bounded by :class:`SendBounded`.

:class:`JsonErrorH11` keeps chatd's error contract where hypercorn and h11
answer by themselves (a malformed head, a too large head, an unknown
transfer coding, an app that failed before answering, a refused WebSocket
upgrade): each gets the ``{"error": {"code", "message"}}`` body. It also
refuses a request carrying both ``Content-Length`` and ``Transfer-Encoding``
(400 and close, RFC 9112 §6.1) and never switches to HTTP/2 (``h2c`` upgrade,
prior knowledge): chatd speaks HTTP/1.1 only, with the deadlines above.

Both subclass hypercorn internals whose shape is pinned by the version range
in pyproject.toml; the tests in tests/test_hostile_http.py exercise each path.
"""

from __future__ import annotations

import enum
import logging
from math import inf
from typing import Any

import attrs
import h11
import trio
from hypercorn.events import Closed, RawData, Updated
from hypercorn.events import Event as ServerEvent
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.utils import parse_socket_addr
from hypercorn.typing import ConnectionState

from chatd.web.http_errors import code_for_status, error_body, status_phrase
from chatd.web.http_handoff import HandoffStream

log = logging.getLogger(__name__)

#: Time the transport adds to ``body_s`` before it closes a connection whose
#: body stalled, so that the application's own 408 goes out first.
BODY_GRACE_S = 2.0


@attrs.frozen
class Timeouts:
    """Per-phase deadlines of an HTTP connection, in seconds (``server.*_timeout_s``)."""

    head_s: float = 10.0
    body_s: float = 30.0
    keepalive_s: float = 75.0
    #: One write the client does not read for this long closes the connection.
    send_s: float = 30.0


class Phase(enum.Enum):
    IDLE = "idle"
    HEAD = "head"
    BUSY = "busy"


class SendBounded(trio.abc.HalfCloseableStream):
    """A socket stream with bytes already read put back in front, and writes with a deadline.

    hypercorn writes inside a shielded cancel scope, so a client that never
    reads would hold the connection forever, even through a graceful stop. A
    write that does not finish within ``send_s`` closes the socket and raises
    ``BrokenResourceError``, which hypercorn treats as the peer gone.
    """

    def __init__(self, stream: trio.SocketStream, prefix: bytes, send_s: float) -> None:
        self.stream = stream
        self.socket = stream.socket
        self._prefix = prefix
        self._send_s = send_s

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_s) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream)
            raise trio.BrokenResourceError("the client did not read the answer in time")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class JsonErrorH11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol with JSON error bodies, strict framing and no HTTP/2."""

    _json_error: bytes | None = None

    async def _send_error_response(self, status_code: int) -> None:
        """h11 refused the request head (400, 431, 501): answer in JSON and close."""
        body = error_body(code_for_status(status_code), status_phrase(status_code))
        await self._send_h11_event(h11.Response(status_code=status_code, headers=_error_headers(body)))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def stream_send(self, event: StreamEvent) -> None:
        """Give hypercorn's own empty error answers (no content-type) a JSON body."""
        if isinstance(event, Response) and event.status_code >= 400 and not _has_header(event.headers, b"content-type"):
            self._json_error = error_body(code_for_status(event.status_code), status_phrase(event.status_code))
            event = Response(
                stream_id=event.stream_id, status_code=event.status_code, headers=_error_headers(self._json_error)
            )
        elif isinstance(event, Body) and self._json_error is not None:
            return  # hypercorn's errors have no body; a rejection's own body is replaced by ours
        elif isinstance(event, EndBody) and self._json_error is not None:
            body, self._json_error = self._json_error, None
            await super().stream_send(Body(stream_id=event.stream_id, data=body))
        await super().stream_send(event)

    async def _send_h11_event(self, event: Any) -> None:
        """As hypercorn's, but an event h11 refuses to send closes the connection instead of raising.

        hypercorn raises there when the peer is not in error, e.g. a second
        error answer on a refused WebSocket upgrade; nothing more can be said
        on such a connection, so it is closed.
        """
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError as exc:
            log.warning("HTTP connection from %s: cannot send %s (%s); closing it", self.client, type(event).__name__, exc)
            await self.send(Closed())
        else:
            await self.send(RawData(data=data))

    async def _maybe_recycle(self) -> None:
        """hypercorn's end of a request (next cycle, or close), never cut short.

        It runs in the request's own task, from the app's last send; quart-trio
        cancels that task as soon as it hears ``http.disconnect``, which this
        very call sends it first. Unshielded, the cancellation lands before
        ``Closed`` (a ``Connection: close`` answer: the socket would stay open)
        or ``Updated(idle=True)`` (the keep-alive deadline would never start) is
        sent. The work is bounded: bookkeeping and closing our own socket.
        """
        with trio.CancelScope(shield=True):
            await super()._maybe_recycle()

    async def _check_protocol(self, event: h11.Request) -> None:
        """No switch to HTTP/2; a request framed twice is refused (RFC 9112 §6.1)."""
        names = {name.lower() for name, _ in event.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", error_status_hint=400)

    async def _handle_events(self) -> None:
        try:
            await super()._handle_events()
        except h11.RemoteProtocolError as error:  # from _check_protocol, before any stream exists
            await self._send_error_response(error.error_status_hint)
            await self.send(Closed())


def _has_header(headers: Any, name: bytes) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]


class HttpConnection(TCPServer):
    """Serve one plain-TCP HTTP/1.1 connection with the deadlines of :class:`Timeouts`.

    ``head_started`` is when the first request's head began (the accept time:
    chatd's listener read that head already and passes it in the stream).
    ``handoff`` is the stream itself when it may take the connection back for a
    WebSocket upgrade (chatd.web.http_handoff): it is told when hypercorn is
    idle, and once it took the connection, hypercorn's remaining tasks end.
    """

    def __init__(
        self,
        app: Any,
        config: Any,
        context: Any,
        state: Any,
        stream: HandoffStream | SendBounded,
        timeouts: Timeouts,
        head_started: float,
        *,
        handoff: HandoffStream | None = None,
    ) -> None:
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self.socket_stream = stream
        self.handoff = handoff
        self.timeouts = timeouts
        self.phase = Phase.HEAD
        self.phase_started = head_started
        #: The scope of the read in progress: a phase change moves its deadline.
        self._read_scope = trio.CancelScope()

    async def run(self) -> None:
        """hypercorn's ``TCPServer.run`` for plain TCP, with :class:`JsonErrorH11` as the protocol."""
        socket = self.socket_stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                args = (self.app, self.config, self.context, task_group, ConnectionState(self.state), False,
                        client, server, self.protocol_send)
                self.protocol = ProtocolWrapper(*args, "http/1.1")
                self.protocol.protocol = JsonErrorH11(*args)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()
            self._break_cycles()

    def _break_cycles(self) -> None:
        """Drop the references that tie this connection's objects into cycles.

        hypercorn's protocol objects hold this server's bound methods and it holds
        them: ~40 objects per HTTP connection that only the cyclic collector
        could free, and at a few hundred connections a minute those collections
        stopped the event loop for tens of ms (soak, benchmarks/README.md). Once
        the connection is over nothing uses them, so plain reference counting
        frees them at once. Our own stream attributes stay: the listener reads
        the hand-off's result after this returns.
        """
        wrapper = getattr(self, "protocol", None)
        inner = getattr(wrapper, "protocol", None)
        for obj in (inner, wrapper, getattr(self, "_task_group", None), getattr(self, "idle_task", None)):
            if obj is not None and hasattr(obj, "__dict__"):
                vars(obj).clear()
        for name in ("protocol", "_task_group", "idle_task", "app", "context", "state", "config"):
            vars(self).pop(name, None)

    async def protocol_send(self, event: ServerEvent) -> None:
        if isinstance(event, Updated):
            if self.handoff is not None:
                # Before hypercorn's own handling: Updated(idle=True) is sent from
                # the request's task, which quart-trio may already have cancelled
                # (it does on http.disconnect), and the first checkpoint in
                # hypercorn's handling would then end it before we hear of it.
                self.handoff.set_idle(event.idle)
            self._enter(Phase.IDLE if event.idle else Phase.BUSY)
            if event.idle and self._h11_buffered():
                self._enter(Phase.HEAD)  # a pipelined request's head has begun already
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        while True:
            self._read_scope = trio.CancelScope(deadline=self._read_deadline())
            with self._read_scope:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            if self._read_scope.cancelled_caught:
                log.debug("closing an HTTP connection: no progress in phase %s", self.phase.value)
                break
            if data and self.phase is Phase.IDLE:
                self._enter(Phase.HEAD)
                await self.idle_task.stop()  # the head deadline takes over from keep-alive
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())
        if self.handoff is not None and self.handoff.upgrade is not None:
            # hypercorn is done with this connection, but its keep-alive timer
            # (maybe being restarted right now) would hold it, and the upgrade:
            # end every task it still has here.
            nursery = self._task_group._nursery
            assert nursery is not None
            nursery.cancel_scope.cancel()

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.phase_started = trio.current_time()
        self._read_scope.deadline = self._read_deadline()

    def _read_deadline(self) -> float:
        t = self.timeouts
        if self.phase is Phase.IDLE:
            return self.phase_started + t.keepalive_s
        if self.phase is Phase.HEAD:
            return self.phase_started + t.head_s
        if self._h11_state() is h11.SEND_BODY:
            return self.phase_started + t.body_s + BODY_GRACE_S
        return inf  # the request is in: the client may wait silently for its answer

    def _h11_connection(self) -> Any:
        """h11's connection (or hypercorn's WebSocket stand-in); ``self.protocol`` is set in run() before any read."""
        protocol = self.protocol.protocol
        return protocol.connection if isinstance(protocol, H11Protocol) else None

    def _h11_state(self) -> Any:
        return getattr(self._h11_connection(), "their_state", None)

    def _h11_buffered(self) -> bool:
        trailing = getattr(self._h11_connection(), "trailing_data", (b"", False))
        return bool(trailing[0])

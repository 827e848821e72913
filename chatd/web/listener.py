"""One port for HTTP and WebSocket: read the request head, then hand the connection over.

``GET /v1/ws`` upgrades go to chatd's own WebSocket handler on wsproto
(:mod:`chatd.web.ws_wsproto`): measured here, hypercorn + Quart's WebSocket
machinery costs ~1.8x the CPU per frame and ~1.9x the memory per connection
of a bare wsproto connection (../shared/DESIGN.md), and only our own loop can
coalesce many frames into one socket write. Every other connection is
served by hypercorn's own per-connection server, with the bytes already read
put back in front of the stream, so HTTP behaves exactly as under
``hypercorn.trio.serve``. An upgrade that arrives later on a keep-alive HTTP
connection is taken back from hypercorn (chatd.web.http_handoff) and served
by the same wsproto handler: hypercorn's WebSocket code is never used.

One connection can never stop the others: :func:`serve`'s per-connection
handler catches every ``Exception`` raised while serving it (never
``BaseException``: Trio's ``Cancelled`` passes), logs it once with the
connection's id and closes that connection. A client that does not send its
first request head within ``Timeouts.head_s`` is closed without an answer;
later phases are bounded in :mod:`chatd.web.http_conn`.

This module mirrors ``hypercorn.trio.run.worker_serve`` (lifespan, worker
context, graceful shutdown by deadline) around our own accept loop; it uses
hypercorn's TCPServer, Lifespan and WorkerContext, whose constructors are
pinned by the version range in pyproject.toml.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from chatd.errors import StartupError
from chatd.web.http_errors import error_answer, linger
from chatd.web.http_conn import HttpConnection, SendBounded, Timeouts
from chatd.web.http_handoff import HandoffStream, head_asks_upgrade

log = logging.getLogger(__name__)

#: A request head larger than this is not a request we serve.
MAX_HEAD_BYTES = 16 * 1024

WsHandler = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def read_head(stream: trio.SocketStream) -> bytes:
    """Bytes up to and including the end of the request head (or what came before EOF/limit)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_HEAD_BYTES:
        chunk = await stream.receive_some(MAX_HEAD_BYTES)
        if not chunk:
            break
        data += chunk
    return data


async def refuse_large_head(stream: trio.SocketStream) -> None:
    """Answer 431 in JSON, then read and drop what the client still sends for a moment.

    Closing with unread bytes in the socket makes the kernel reset the
    connection, and the client may lose the answer; so the close lingers,
    bounded in time and bytes.
    """
    await stream.send_all(error_answer(431, "too_large", f"the request head exceeds {MAX_HEAD_BYTES} bytes"))
    await stream.send_eof()
    await linger(stream)


def is_websocket_upgrade(head: bytes) -> bool:
    """A GET asking to upgrade to websocket, whatever its path: all of them go to
    chatd's WebSocket endpoint (which answers 404 off ``/v1/ws``), none to hypercorn's.
    Only the first request's head counts (a pipelined upgrade behind it is the
    keep-alive path's)."""
    return head_asks_upgrade(head)


def bind_failure(exc: OSError, host: str, port: int) -> str:
    """One line saying why listening failed and which key to change."""
    if isinstance(exc, socket.gaierror):
        return f"server.host {host!r} cannot be resolved ({exc.strerror}): set server.host"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use: set server.port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"server.host {host!r} is not an address of this machine: set server.host"
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges to listen on: set server.port above 1023"
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}): set server.host and server.port"


async def serve(
    app: Any,
    config: HypercornConfig,
    ws_handler: WsHandler,
    *,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    timeouts: Timeouts = Timeouts(),
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns; then stop accepting and give open
    connections ``config.graceful_timeout`` seconds before cancelling them."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)

    connection_ids = itertools.count(1)

    async def serve_one(stream: trio.SocketStream) -> None:
        accepted = trio.current_time()
        with trio.move_on_after(timeouts.head_s) as head_scope:
            head = await read_head(stream)
        if head_scope.cancelled_caught or not head:
            return  # silent, or too slow to send a request head: close without an answer
        if b"\r\n\r\n" not in head and len(head) >= MAX_HEAD_BYTES:
            await refuse_large_head(stream)
            return
        if is_websocket_upgrade(head):
            await ws_handler(stream, head)
            return
        http = HandoffStream(SendBounded(stream, b"", timeouts.send_s), head)
        await HttpConnection(wrapped, config, context, lifespan_state.copy(), http, timeouts, accepted, handoff=http)
        if http.upgrade is not None:  # a WebSocket upgrade on the keep-alive connection
            await ws_handler(stream, http.upgrade)

    async def handle(stream: trio.SocketStream) -> None:
        """One connection; whatever it raises stays here (the rule of the house)."""
        connection_id, peer = next(connection_ids), _peer(stream)
        try:
            await serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away
        except Exception:
            log.exception("connection %d from %s failed; closing it", connection_id, peer)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise StartupError(bind_failure(exc, host, port)) from exc
        bound = listeners[0].socket.getsockname()
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_loop, listener, handlers, handle)
                task_status.started(f"http://{bound[0]}:{bound[1]}")
                await shutdown_trigger()
                accepting.cancel_scope.cancel()  # closes the listeners: stop accepting
            await context.terminated.set()  # idle keep-alive HTTP connections close
            handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


#: Most connections taken from the kernel's queue in one wake-up of the accept loop.
ACCEPT_BURST = 512
#: accept() errors that mean "out of descriptors or memory for now": wait, then go on.
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: accept() errors that concern one connection only (it went away before it was taken).
_IGNORABLE_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


async def accept_loop(
    listener: trio.SocketListener, handlers: trio.Nursery, handle: Callable[[trio.SocketStream], Awaitable[None]]
) -> None:
    """Take every connection the kernel has queued at each wake-up, not one per round.

    ``trio.serve_listeners`` accepts one connection per scheduling round (each
    accept is a checkpoint). When thousands of clients reconnect at once, a
    round is long (every connection's handshake, sync and catch-up runs in
    it), so accepting fell to a few dozen per second, the kernel's queue
    (somaxconn) overflowed and dropped SYNs, and clients waited for their SYN
    retransmits (1, 3, 7, 15 s...) and timed out in the handshake. Here one
    wake-up drains up to ACCEPT_BURST queued connections, each handed to its
    own task, so a storm is limited by the work per connection, not by the
    accept rate. The listening socket is used through a duplicate descriptor
    in plain non-blocking mode (the same kernel socket).
    """
    raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
    raw.setblocking(False)
    try:
        async with listener:
            while True:
                await trio.lowlevel.wait_readable(raw)
                for _ in range(ACCEPT_BURST):
                    try:
                        conn, _ = raw.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _IGNORABLE_ERRNOS:
                            continue
                        if exc.errno not in _CAPACITY_ERRNOS:
                            raise
                        log.error("accept: %s; retrying in 0.1 s", os.strerror(exc.errno or 0))
                        await trio.sleep(0.1)
                        break
                    handlers.start_soon(handle, trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
    finally:
        raw.close()


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername())
    except OSError:
        return "an unknown peer"

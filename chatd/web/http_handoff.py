"""Take a keep-alive HTTP connection back from hypercorn when a WebSocket upgrade arrives on it.

The listener gives an HTTP connection to hypercorn's per-connection server.
Hypercorn would serve a later ``Upgrade: websocket`` request on that
connection with its own WebSocket code, whose limits are not ours (it buffers
a whole frame before checking its size, and negotiates permessage-deflate, so
one small compressed frame can inflate to hundreds of MiB). So hypercorn never
sees such a request: :class:`HandoffStream` sits between it and the socket,
follows the request boundaries with a shadow h11 parser, and passes on only
bytes of requests known not to be WebSocket upgrades. When one is, the stream
withholds it and everything after it, waits until hypercorn has answered
every earlier request (it reports ``Updated(idle=True)``, passed on by
:class:`chatd.web.http_conn.HttpConnection`), then tells hypercorn the client closed; hypercorn
ends cleanly, and the listener passes the socket and the withheld bytes to
the same wsproto endpoint a fresh upgrade goes to.

Cost: every HTTP byte is parsed twice (the shadow parser only splits, it
builds no response). A request the shadow parser cannot follow (malformed,
``Connection: close``, HTTP/1.0) ends the shadowing: from there on the bytes
go through untouched and hypercorn answers as it always does; no further
request can follow on such a connection anyway.
"""

from __future__ import annotations

from typing import Any, Protocol

import h11
import trio


class SocketLike(Protocol):
    """A byte stream that exposes its socket (trio's SocketStream, or a wrapper of one)."""

    socket: trio.socket.SocketType

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def wait_send_all_might_not_block(self) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


def is_upgrade_request(method: bytes, headers: Any) -> bool:
    """A GET asking for ``Upgrade: websocket`` (a superset of what hypercorn would serve as one)."""
    if method.upper() != b"GET":
        return False
    return any(name.lower() == b"upgrade" and b"websocket" in value.lower() for name, value in headers)


def head_asks_upgrade(raw: bytes) -> bool:
    """Byte-level: a GET whose (first) head has an ``Upgrade`` header naming websocket.

    The listener routes fresh connections with it, and a malformed head on a
    keep-alive connection is judged by it, so both paths agree.
    """
    head = raw.split(b"\r\n\r\n", 1)[0]
    if not head.startswith(b"GET "):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class HandoffStream(trio.abc.HalfCloseableStream):
    """A socket stream as hypercorn sees it: the head already read put back in
    front, and a WebSocket upgrade request held back for the listener."""

    def __init__(self, stream: SocketLike, prefix: bytes) -> None:
        self.stream = stream
        self.socket = stream.socket
        #: The upgrade request and whatever followed it, once hypercorn let go of the connection.
        self.upgrade: bytes | None = None
        self._shadow: h11.Connection | None = h11.Connection(h11.SERVER)
        self._pending = b""  # read from the socket, not yet given to hypercorn
        self._ready = b""  # bytes of known non-upgrade requests, for hypercorn
        self._held: bytes | None = None  # an upgrade request (and what followed), withheld
        self._eof = False
        self._closed = False
        self._idle = True
        self._idle_changed = trio.Event()
        self._scan(prefix)

    def set_idle(self, idle: bool) -> None:
        """Hypercorn has answered every request it was given (or has one in hand)."""
        self._idle = idle
        self._idle_changed.set()
        self._idle_changed = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self._ready:
                data, self._ready = self._ready, b""
                await trio.lowlevel.checkpoint()
                return data
            if self._held is not None:
                # Hypercorn read everything before the upgrade; once it has
                # answered it all, it hears EOF and lets go of the connection.
                while not self._idle and not self._closed:
                    await self._idle_changed.wait()
                if not self._closed:  # else hypercorn closed the connection itself
                    self.upgrade = self._held
                self._held = None
                return b""
            if self._eof or self.upgrade is not None:
                await trio.lowlevel.checkpoint()
                return b""
            data = await self.stream.receive_some(max_bytes)
            if self._shadow is None:
                return data
            if not data:
                self._eof = True
                self._ready, self._pending = self._pending, b""  # a partial request: hypercorn answers it
                continue
            self._scan(data)

    def _scan(self, data: bytes) -> None:
        """Feed the shadow parser; move whole non-upgrade parts to ``_ready``."""
        shadow = self._shadow
        if shadow is None:
            self._ready += data
            return
        self._pending += data
        shadow.receive_data(data)
        request_start = 0  # in _pending: where the request being parsed began
        at_head = False
        try:
            while True:
                at_head = shadow.their_state is h11.IDLE
                event = shadow.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    if is_upgrade_request(event.method, event.headers):
                        self._held = self._pending[request_start:]
                        self._ready += self._pending[:request_start]
                        self._pending, self._shadow = b"", None
                        return
                elif isinstance(event, h11.EndOfMessage):
                    # Play the server's part so the parser moves on to the next request.
                    shadow.send(h11.Response(status_code=204, headers=[]))
                    shadow.send(h11.EndOfMessage())
                    shadow.start_next_cycle()
                    request_start = len(self._pending) - len(shadow.trailing_data[0])
                else:  # data of a request body, PAUSED, ConnectionClosed...
                    if not isinstance(event, h11.Data):
                        raise h11.LocalProtocolError("stop following")
        except h11.RemoteProtocolError:
            if at_head and head_asks_upgrade(self._pending[request_start:]):
                # A malformed upgrade request: the WebSocket endpoint answers it
                # (400 in the contract's shape), as it would on a fresh connection.
                self._held = self._pending[request_start:]
                self._ready += self._pending[:request_start]
            else:
                self._ready += self._pending
            self._pending, self._shadow = b"", None
            return
        except h11.LocalProtocolError:
            self._ready += self._pending
            self._pending, self._shadow = b"", None
            return
        # What the parser consumed belongs to requests we know are not upgrades;
        # an incomplete request head stays pending until it is whole.
        if shadow.their_state is h11.IDLE:
            cut = request_start
        else:
            cut = len(self._pending) - len(shadow.trailing_data[0])
        self._ready += self._pending[:cut]
        self._pending = self._pending[cut:]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self.upgrade is None:
            await self.stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self.upgrade is None:  # else the listener hands the socket on, then closes it
            self._closed = True
            self._idle_changed.set()
            await self.stream.aclose()
        else:
            await trio.lowlevel.checkpoint()

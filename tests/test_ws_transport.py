"""chatd.web.ws_wsproto's own framing and its direct write (try_send), on a real socket pair."""

from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, Message, TextMessage

from chatd.web.ws_wsproto import WsprotoTransport, frame_bytes
from chatd.ws.session import NOT_SENT, PARTLY_SENT, SENT


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_bytes_is_what_wsproto_sends(size: int) -> None:
    server = Connection(ConnectionType.SERVER)
    text = "é" * (size // 2) + "x" * (size % 2)
    assert frame_bytes(text) == server.send(TextMessage(data=text))
    blob = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    assert frame_bytes(blob) == server.send(BytesMessage(data=blob))


def _parse(client: Connection, data: bytes, parts: list[str] | None = None) -> list[str | bytes]:
    """Whole text messages in ``data`` (a message split over reads is kept in ``parts``)."""
    parts = [] if parts is None else parts
    client.receive_data(data)
    out: list[str | bytes] = []
    for event in client.events():
        assert isinstance(event, Message)
        parts.append(event.data)
        if event.message_finished:
            out.append("".join(parts))
            parts.clear()
    return out


async def test_try_send_then_send_many_keep_every_frame_in_order() -> None:
    a, b = trio.socket.socketpair()
    server_stream, client_stream = trio.SocketStream(a), trio.SocketStream(b)
    transport = WsprotoTransport(server_stream, Connection(ConnectionType.SERVER), 1 << 20)
    client = Connection(ConnectionType.CLIENT)
    sent: list[str] = []
    answers = []
    # Nobody reads: direct writes succeed until the kernel's buffer is full.
    for i in range(100_000):
        frame = f"{i:06d}" + "z" * 1000
        answer = transport.try_send(frame)
        answers.append(answer)
        if answer == NOT_SENT:
            break
        sent.append(frame)
        if answer == PARTLY_SENT:
            # Bytes are pending: nothing more goes directly until a write flushed them.
            assert transport.try_send("next") == NOT_SENT
            break
    assert answers[0] == SENT and answers[-1] in (NOT_SENT, PARTLY_SENT)
    rest = [f"tail {i}" for i in range(5)]
    received: list[str | bytes] = []
    parts: list[str] = []

    async def read_all() -> None:
        while len(received) < len(sent) + len(rest):
            received.extend(_parse(client, await client_stream.receive_some(65536), parts))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await transport.send_many(rest)  # writes what try_send left pending first
    assert received == sent + rest
    # Nothing pending, nothing being written: a direct write goes straight through again.
    assert transport.try_send("after") == SENT
    assert _parse(client, await client_stream.receive_some(65536)) == ["after"]

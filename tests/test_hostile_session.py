"""Hostile clients inside an open WebSocket: floods of control frames, impossible cursors.

The floods are written with wsproto onto a raw socket as fast as the kernel
takes them, without reading the answers: what a hostile client does, not what
a friendly library allows.
"""

from __future__ import annotations

import json

import httpx
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from chatd.ws.session import CONTROL_BURST, Session
from tests.support import RunningServer, http, running_server, ws_client


class RawWs:
    """A WebSocket client on a raw socket: frames out as fast as possible, events in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, srv: RunningServer, token: str) -> RawWs:
        host, port = srv.url.removeprefix("http://").split(":")
        raw = cls(await trio.open_tcp_stream(host, int(port)))
        await raw.stream.send_all(
            raw.ws.send(Request(host=host, target="/v1/ws", extra_headers=[(b"authorization", f"Bearer {token}".encode())]))
        )
        while True:
            raw.ws.receive_data(await raw.stream.receive_some(65536))
            if any(isinstance(e, AcceptConnection) for e in raw.ws.events()):
                return raw

    def frames(self, frame: dict[str, object], count: int) -> bytes:
        data = json.dumps(frame)
        return b"".join(self.ws.send(TextMessage(data=data)) for _ in range(count))

    async def close_code(self, timeout: float = 15) -> int | None:
        """Read until the server's close frame (its code) or EOF (None)."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        return event.code


def _session_of(srv: RunningServer, user_id: int) -> Session:
    sessions = srv.services.hub._sessions[user_id]
    (session,) = sessions
    assert isinstance(session, Session)
    return session


async def test_sync_flood_is_coalesced_then_closed_with_1008(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        raw = await RawWs.connect(srv, alice.token)
        # Within the budget: many syncs in one write share one pump task.
        await raw.stream.send_all(raw.frames({"type": "sync", "after": 0}, int(CONTROL_BURST) - 20))
        with trio.fail_after(10):
            while len(srv.services.hub._sessions.get(alice.user_id, ())) == 0:
                await trio.sleep(0.01)
            session = _session_of(srv, alice.user_id)
            while session._sync_wanted is None:
                await trio.sleep(0.01)
        assert session._nursery is not None
        # reader, writer, pump: no task per sync.
        assert len(session._nursery.child_tasks) <= 3
        # Past the budget: 100,000 syncs close the connection with 1008, and it takes
        # no more than a few hundred of them to get there.
        flood = raw.frames({"type": "sync", "after": 0}, 2000)
        with trio.move_on_after(10):
            try:
                for _ in range(50):
                    await raw.stream.send_all(flood)
            except trio.BrokenResourceError:
                pass
        code = await raw.close_code()
        assert code in (1008, None)
        with trio.fail_after(10):
            while srv.services.hub._sessions.get(alice.user_id):
                await trio.sleep(0.01)
        # The node serves everyone else as before.
        async with http(srv) as api:
            assert (await api.get("/healthz")).status_code == 200
        async with ws_client(srv, alice.token) as a:
            events, cursor = await a.sync(0)
            assert cursor == 0 and events == []


async def test_ping_and_garbage_floods_close_with_1008(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        for frame in ({"type": "ping"}, {"type": "no-such-type"}, {"nope": 1}):
            raw = await RawWs.connect(srv, alice.token)
            with trio.move_on_after(10):
                try:
                    await raw.stream.send_all(raw.frames(frame, 5000))
                except trio.BrokenResourceError:
                    pass
            code = await raw.close_code()
            assert code in (1008, None), (frame, code)
            await raw.stream.aclose()


async def test_a_real_client_stays_within_the_budget(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with ws_client(srv, alice.token) as a:
            for i in range(60):
                await a.send({"type": "ping", "t": i})
                assert (await a.recv()) == {"type": "pong", "t": i}
            for _ in range(5):
                events, cursor = await a.sync(0)
                assert cursor == 0


async def test_sync_beyond_the_head_is_invalid_and_delivers_nothing(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        async with http(srv, alice.token) as api:
            created = await api.post("/v1/channels", {"kind": "group", "name": "g", "members": [bob.user_id]})
            channel = created.json()["channel_id"]
        async with ws_client(srv, bob.token, welcome=False) as b, ws_client(srv, alice.token) as a:
            welcome = await b.recv()
            head = welcome["inbox_head"]
            await b.send({"type": "sync", "after": head + 5, "ref": "s1"})
            error = await b.recv()
            assert error["type"] == "error" and error["code"] == "invalid" and error["ref"] == "s1"
            await a.sync(0)
            await a.send_message(channel, "m1")
            # Nothing is delivered on the refused cursor: the next frame is our pong.
            await b.send({"type": "ping", "t": "after"})
            assert (await b.recv()) == {"type": "pong", "t": "after"}
            # A cursor the client can trust works on the same connection.
            events, cursor = await b.sync(head)
            assert [e["client_msg_id"] for e in events] == ["m1"] and cursor == head + 1


async def test_sync_at_a_head_learnt_after_welcome_is_valid(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        async with ws_client(srv, bob.token, welcome=False) as b:
            welcome = await b.recv()
            async with http(srv, alice.token) as api:
                created = await api.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]})
                assert created.status_code in (200, 201)
                # A cursor from another device of bob, beyond the head welcome reported.
            events, cursor = await b.sync(welcome["inbox_head"] + 1)
            assert events == [] and cursor == welcome["inbox_head"] + 1


async def test_healthz_stays_fast_during_a_sync_flood(db_url: str) -> None:
    async with running_server(db_url) as srv:
        users = [await srv.user(f"u{i}") for i in range(4)]

        async def flood(token: str) -> None:
            raw = await RawWs.connect(srv, token)
            with trio.move_on_after(5):
                try:
                    while True:
                        await raw.stream.send_all(raw.frames({"type": "sync", "after": 0}, 500))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await raw.stream.aclose()

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(flood, user.token)
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
                for _ in range(20):
                    assert (await client.get("/healthz")).status_code == 200
                    await trio.sleep(0.05)

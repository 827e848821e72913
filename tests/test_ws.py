"""The WebSocket contract (PROTOCOL §3-4) from outside: real server, real sockets, real clients."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.support import RunningServer, http, running_server, ws_client


async def _group(srv: RunningServer, owner_token: str, name: str, members: list[int]) -> int:
    async with http(srv, owner_token) as api:
        r = await api.post("/v1/channels", {"kind": "group", "name": name, "members": members})
        assert r.status_code == 201, r.text
        return int(r.json()["channel_id"])


async def test_welcome_sync_live_and_ack_after_commit(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        channel = await _group(srv, alice.token, "general", [bob.user_id])
        async with ws_client(srv, alice.token, welcome=False) as a, ws_client(srv, bob.token, welcome=False) as b:
            welcome = await a.recv()
            assert welcome == {
                "type": "welcome",
                "user_id": alice.user_id,
                "device_id": alice.device_id,
                "node": "test-node",
                "heartbeat_s": 30,
                "inbox_head": 1,
            }
            await b.recv()
            events, cursor = await b.sync(0)
            assert [e["kind"] for e in events] == ["channel"]
            assert events[0] == {
                "type": "event", "inbox_seq": 1, "kind": "channel",
                "channel_id": channel, "change": "created", "name": "general",
            }
            assert cursor == 1
            await a.sync(0)
            ack = await a.send_message(channel, "m-1", "hello bob")
            assert ack["type"] == "ack" and ack["ref"] == "m-1"
            assert ack["seq"] == 1 and ack["duplicate"] is False and ack["state"] == "sent"
            assert ack["channel_id"] == channel and ack["client_msg_id"] == "m-1"
            assert ack["created_at"].endswith("Z") and len(ack["created_at"]) == 24
            # The ack came after the commit: the message is already in history.
            async with http(srv, bob.token) as api:
                history = (await api.get(f"/v1/channels/{channel}/messages")).json()["messages"]
            assert [m["text"] for m in history] == ["hello bob"]
            live = await b.recv_type("event")
            assert live["inbox_seq"] == 2 and live["kind"] == "message"
            assert live["text"] == "hello bob" and live["sender_id"] == alice.user_id and live["seq"] == 1
            # The sender's own inbox has it too (its other devices learn of it).
            own = await a.recv_type("event")
            assert own["inbox_seq"] == 2 and own["client_msg_id"] == "m-1"


async def test_no_events_before_sync_and_sync_with_inbox_head(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        channel = await _group(srv, alice.token, "g", [bob.user_id])
        async with ws_client(srv, bob.token, welcome=False) as b, ws_client(srv, alice.token) as a:
            welcome = await b.recv()
            await a.sync(0)
            await a.send_message(channel, "x1")
            await b.send({"type": "ping", "t": 1})
            assert (await b.recv()) == {"type": "pong", "t": 1}, "an event arrived before sync"
            # Skip history with inbox_head: only what comes after.
            events, cursor = await b.sync(welcome["inbox_head"] + 1)
            assert events == [] and cursor == 2
            await a.send_message(channel, "x2")
            live = await b.recv_type("event")
            assert live["inbox_seq"] == 3 and live["client_msg_id"] == "x2"


async def test_msgpack_subprotocol(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice.token, "solo", [])
        async with ws_client(srv, alice.token, fmt="msgpack") as a:
            assert a.ws.subprotocol == "chatd.v1.msgpack"
            events, cursor = await a.sync(0)
            assert cursor == 1
            ack = await a.send_message(channel, "mp-1", "packed")
            assert ack["type"] == "ack" and ack["seq"] == 1
            event = await a.recv_type("event")
            assert event["text"] == "packed"
            await a.send_raw(json.dumps({"type": "ping"}))  # text on the msgpack protocol
            assert (await a.recv())["code"] == "bad_frame"


async def test_default_subprotocol_is_json_and_unknown_is_refused(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with open_websocket_url(srv.ws_url + f"?token={alice.token}") as ws:
            assert ws.subprotocol is None
            assert json.loads(await ws.get_message())["type"] == "welcome"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(srv.ws_url + f"?token={alice.token}", subprotocols=["chatd.v9"]):
                pass
        assert rejected.value.status_code == 400


@pytest.mark.parametrize("how", ["none", "bad-header", "bad-query"])
async def test_bad_token_is_refused_before_upgrade(db_url: str, how: str) -> None:
    async with running_server(db_url) as srv:
        url, headers = srv.ws_url, []
        if how == "bad-header":
            headers = [("Authorization", "Bearer nope")]
        elif how == "bad-query":
            url += "?token=nope"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url, extra_headers=headers):
                pass
        assert rejected.value.status_code == 401
        body = json.loads(rejected.value.body or b"{}")
        assert body["error"]["code"] == "unauthorized"


async def test_idempotent_retry_across_reconnect_and_devices(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        channel = await _group(srv, alice.token, "g", [bob.user_id])
        async with ws_client(srv, alice.token) as a:
            first = await a.send_message(channel, "retry-me", "once")
        # Reconnect (the ack may have been lost in transit): same client_msg_id.
        async with ws_client(srv, alice.token) as a:
            again = await a.send_message(channel, "retry-me", "once")
        # Another device of the same user.
        second_device = await srv.token(alice)
        async with ws_client(srv, second_device) as a2:
            third = await a2.send_message(channel, "retry-me", "once")
        assert first["duplicate"] is False
        for dup in (again, third):
            assert dup["duplicate"] is True
            assert (dup["seq"], dup["created_at"], dup["channel_id"]) == (
                first["seq"], first["created_at"], first["channel_id"])
        # Another user may use the same client_msg_id: it is unique per sender.
        async with ws_client(srv, bob.token) as b:
            other = await b.send_message(channel, "retry-me", "mine")
        assert other["duplicate"] is False and other["seq"] == 2
        async with http(srv, alice.token) as api:
            messages = (await api.get(f"/v1/channels/{channel}/messages")).json()["messages"]
        assert [m["seq"] for m in messages] == [2, 1]


async def test_send_errors_keep_the_connection(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"max_text_chars": 10}}) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        theirs = await _group(srv, bob.token, "private", [])
        mine = await _group(srv, alice.token, "mine", [])
        async with ws_client(srv, alice.token) as a:
            denied = await a.send_message(theirs, "e1")
            assert denied["type"] == "error" and denied["code"] == "not_member"
            missing = await a.send_message(999999, "e2")
            assert missing["code"] == "not_member"
            long = await a.send_message(mine, "e3", "x" * 11)
            assert long["code"] == "too_large"
            ok = await a.send_message(mine, "e4", "x" * 10)
            assert ok["type"] == "ack" and ok["seq"] == 1


async def test_rate_limit_answers_rate_limited(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"send_rate_per_s": 1, "send_burst": 2}}) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice.token, "g", [])
        async with ws_client(srv, alice.token) as a:
            replies = [await a.send_message(channel, f"r{i}") for i in range(3)]
        assert [r["type"] for r in replies] == ["ack", "ack", "error"]
        assert replies[2]["code"] == "rate_limited" and replies[2]["retry_after_ms"] > 0


MALFORMED = [
    ("bad json", "{nope", "bad_frame"),
    ("not an object", "[1, 2]", "bad_frame"),
    ("string", '"sync"', "bad_frame"),
    ("no type", '{"after": 0}', "bad_frame"),
    ("type not a string", '{"type": 5}', "bad_frame"),
    ("unknown type", '{"type": "launch"}', "unknown_type"),
    ("sync without after", '{"type": "sync"}', "invalid"),
    ("after is a string", '{"type": "sync", "after": "0"}', "invalid"),
    ("after negative", '{"type": "sync", "after": -1}', "invalid"),
    ("after huge", '{"type": "sync", "after": 100000000000000000000000000000}', "invalid"),
    ("after 1e400", '{"type": "sync", "after": 1e400}', "invalid"),
    ("after null", '{"type": "sync", "after": null}', "invalid"),
    ("after bool", '{"type": "sync", "after": true}', "invalid"),
    ("send no channel", '{"type": "send", "client_msg_id": "a", "text": "t"}', "invalid"),
    ("send channel string", '{"type": "send", "channel_id": "1", "client_msg_id": "a", "text": "t"}', "invalid"),
    ("send channel zero", '{"type": "send", "channel_id": 0, "client_msg_id": "a", "text": "t"}', "invalid"),
    ("send channel 2**63", '{"type": "send", "channel_id": 9223372036854775808, "client_msg_id": "a", "text": "t"}', "invalid"),
    ("send text null", '{"type": "send", "channel_id": 1, "client_msg_id": "a", "text": null}', "invalid"),
    ("send text number", '{"type": "send", "channel_id": 1, "client_msg_id": "a", "text": 5}', "invalid"),
    ("send empty client_msg_id", '{"type": "send", "channel_id": 1, "client_msg_id": "", "text": "t"}', "invalid"),
    ("send long client_msg_id", '{"type": "send", "channel_id": 1, "client_msg_id": "' + "c" * 65 + '", "text": "t"}', "invalid"),
    ("send NUL text", '{"type": "send", "channel_id": 1, "client_msg_id": "a", "text": "a\\u0000b"}', "invalid"),
    ("ref too long", '{"type": "ping", "ref": "' + "r" * 65 + '"}', "invalid"),
    ("receipt bad state", '{"type": "receipt", "channel_id": 1, "seq": 1, "state": "seen"}', "invalid"),
]


async def test_malformed_frames_get_errors_and_the_connection_stays(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice.token, "g", [])
        async with ws_client(srv, alice.token) as a:
            for name, raw, code in MALFORMED:
                await a.send_raw(raw)
                reply = await a.recv()
                assert reply["type"] == "error", name
                assert reply["code"] == code, (name, reply)
                assert "Traceback" not in reply["message"]
            # Binary frame on the JSON protocol.
            await a.send_raw(b"\x81\xa4type\xa4ping")
            assert (await a.recv())["code"] == "bad_frame"
            # A ref that can be read comes back on the error.
            await a.send_raw('{"type": "send", "ref": "mine", "channel_id": "x"}')
            reply = await a.recv()
            assert reply == {"type": "error", "code": "invalid", "message": reply["message"], "ref": "mine"}
            # Too-long text is refused by the send path, not stored.
            await a.send({"type": "send", "channel_id": channel, "client_msg_id": "big", "text": "x" * 4001, "ref": "big"})
            assert (await a.recv())["code"] == "too_large"
            # Still alive, and nothing half-stored.
            ok = await a.send_message(channel, "fine")
            assert ok["type"] == "ack" and ok["seq"] == 1


async def test_oversize_frame_closes_with_1009(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"max_frame_bytes": 4096}}) as srv:
        alice = await srv.user("alice")
        async with ws_client(srv, alice.token) as a:
            await a.send_raw("x" * 5000)
            code = await a.closed_code(5)
            assert code == 1009


async def test_ping_pong_and_idle_timeout(db_url: str) -> None:
    async with running_server(db_url, {"server": {"heartbeat_s": 1}}) as srv:
        alice = await srv.user("alice")
        async with ws_client(srv, alice.token) as a:
            await a.send({"type": "ping", "t": 12345, "ref": "p"})
            assert await a.recv() == {"type": "pong", "t": 12345, "ref": "p"}
            # Frames keep it alive past 3 x heartbeat...
            for _ in range(4):
                await trio.sleep(1)
                await a.send({"type": "ping"})
                assert (await a.recv())["type"] == "pong"
            # ...and silence closes it.
            started = trio.current_time()
            assert await a.closed_code(6) == 1001
            assert trio.current_time() - started >= 2.5


async def test_slow_consumer_is_closed_1008_without_slowing_others(db_url: str) -> None:
    overrides = {"server": {"outgoing_queue": 4, "send_stall_s": 0.5}}
    async with running_server(db_url, overrides) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        carol = await srv.user("carol")
        channel = await _group(srv, alice.token, "g", [bob.user_id, carol.user_id])
        text = "y" * 3000
        async with ws_client(srv, bob.token) as slow, ws_client(srv, carol.token) as fast, \
                ws_client(srv, alice.token) as sender:
            await slow.sync(0)
            await fast.sync(0)
            # bob never reads again; alice sends until bob's socket buffers and queue are full.
            received = 0
            for i in range(400):
                ack = await sender.send_message(channel, f"s{i}", text)
                assert ack["type"] == "ack"
                # carol keeps up, message by message: bob does not slow her down.
                event = await fast.recv_type("event", timeout=5)
                assert event["seq"] == i + 1
                received += 1
            assert received == 400
            code = await slow.closed_code(10)
            # 1008 when the close frame could still be written; bob read nothing for
            # seconds, so his socket may have been dropped without one (1006).
            assert code in (1008, 1006)
        # bob catches up by sync after reconnecting: nothing lost.
        async with ws_client(srv, bob.token) as again:
            events, cursor = await again.sync(0, timeout=30)
            assert [e["inbox_seq"] for e in events] == list(range(1, 402))


async def test_logout_closes_live_connection_and_refuses_token(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with ws_client(srv, alice.token) as a:
            async with http(srv, alice.token) as api:
                assert (await api.post("/v1/logout")).status_code == 204
                assert (await api.get("/v1/me")).status_code == 401
            code = await a.closed_code(5)
            assert code == 4001


async def test_second_sync_restarts_from_its_cursor(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice.token, "g", [])
        async with ws_client(srv, alice.token) as a:
            for i in range(3):
                await a.send_message(channel, f"c{i}")
            events, cursor = await a.sync(0)
            assert [e["inbox_seq"] for e in events] == [1, 2, 3, 4] and cursor == 4
            events, cursor = await a.sync(2)
            assert [e["inbox_seq"] for e in events] == [3, 4] and cursor == 4


async def test_http_and_websocket_share_one_port(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with httpx.AsyncClient(base_url=srv.url) as client:
            assert (await client.get("/healthz")).status_code == 200
        async with ws_client(srv, alice.token) as a:
            await a.send({"type": "ping"})
            assert (await a.recv())["type"] == "pong"


async def test_upgrade_on_a_keep_alive_http_connection(db_url: str) -> None:
    """An upgrade after an HTTP request on the same connection is served too (handed to the wsproto endpoint)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        host, port = srv.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            response = b""
            with trio.fail_after(5):
                while b'"ok"' not in response:
                    response += await stream.receive_some(4096)
            assert response.startswith(b"HTTP/1.1 200")
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host=host, target=f"/v1/ws?token={alice.token}")))
            frames: list[str] = []
            with trio.fail_after(5):
                while not frames:
                    ws.receive_data(await stream.receive_some(4096))
                    for event in ws.events():
                        assert not isinstance(event, Exception)
                        if isinstance(event, AcceptConnection):
                            continue
                        if isinstance(event, TextMessage):
                            frames.append(event.data)
            welcome = json.loads(frames[0])
            assert welcome["type"] == "welcome" and welcome["user_id"] == alice.user_id

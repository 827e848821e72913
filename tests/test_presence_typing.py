"""Presence (PROTOCOL §6) and typing (§3) on one node, from outside.

Presence with a short ``presence.timeout_s``: subscribers get one answer per
id, then only changes; ``GET /v1/presence`` agrees. Typing: to the channel's
other members only, rate-limited, never to non-members.
"""

from __future__ import annotations

import trio

from tests.support import RunningServer, WsClient, http, running_server, ws_client

SHORT = {"presence": {"timeout_s": 1}}


async def _group(srv: RunningServer, token: str, members: list[int]) -> int:
    async with http(srv, token) as api:
        r = await api.post("/v1/channels", {"kind": "group", "name": "g", "members": members})
        assert r.status_code == 201, r.text
        return int(r.json()["channel_id"])


async def _presence_of(ws: WsClient, user_id: int, timeout: float = 10) -> dict[str, object]:
    """The next presence frame about this user (others' are skipped)."""
    with trio.fail_after(timeout):
        while True:
            frame = await ws.recv_type("presence", timeout)
            if frame["user_id"] == user_id:
                return frame


async def _no_frame_of(ws: WsClient, kind: str, within: float) -> None:
    with trio.move_on_after(within):
        while True:
            frame = await ws.recv(timeout=within + 1)
            assert frame["type"] != kind, frame


async def test_presence_transitions_subscribe_and_http_agree(db_url: str) -> None:
    async with running_server(db_url, SHORT) as srv:
        alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
        async with ws_client(srv, alice.token) as a, http(srv, alice.token) as api:
            await a.send({"type": "presence_subscribe", "user_ids": [bob.user_id, carol.user_id, alice.user_id]})
            answers = [await a.recv_type("presence") for _ in range(3)]
            assert [(p["user_id"], p["status"]) for p in answers] == [
                (bob.user_id, "offline"), (carol.user_id, "offline"), (alice.user_id, "online")]
            assert answers[0]["last_seen"] is None
            async with ws_client(srv, bob.token) as b:
                online = await _presence_of(a, bob.user_id)
                assert (online["user_id"], online["status"]) == (bob.user_id, "online")
                assert online["last_seen"].endswith("Z")
                r = (await api.get("/v1/presence", user_ids=f"{bob.user_id},{carol.user_id}")).json()
                assert [(p["user_id"], p["status"]) for p in r["presence"]] == [
                    (bob.user_id, "online"), (carol.user_id, "offline")]
                # Bob stays silent past the timeout while connected: offline, with the time of his last frame.
                await b.send({"type": "ping"})
                offline = await _presence_of(a, bob.user_id)
                assert (offline["user_id"], offline["status"]) == (bob.user_id, "offline")
                assert isinstance(offline["last_seen"], str)
                r = (await api.get("/v1/presence", user_ids=str(bob.user_id))).json()
                assert r["presence"] == [{"user_id": bob.user_id, "status": "offline",
                                          "last_seen": offline["last_seen"]}]
                # A frame brings him back.
                await b.send({"type": "ping"})
                assert (await _presence_of(a, bob.user_id))["status"] == "online"
                # A new watch list replaces the old one: bob's changes no longer come.
                await a.send({"type": "presence_subscribe", "user_ids": [carol.user_id]})
                assert (await _presence_of(a, carol.user_id))["status"] == "offline"
                await b.send({"type": "ping"})
            # alice keeps pinging (she stays online); bob's going offline is not pushed to her now.
            with trio.move_on_after(2.5):
                while True:
                    await a.send({"type": "ping"})
                    frame = await a.recv(timeout=1)
                    assert frame["type"] == "pong", frame
                    await trio.sleep(0.3)


async def test_presence_validation_and_authz(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        async with http(srv) as anon:
            assert (await anon.get("/v1/presence", user_ids="1")).status_code == 401
            api = anon.as_user(alice.token)
            for bad in ("x", "1,,2", "0", ",".join(str(i) for i in range(1, 502))):
                r = await api.get("/v1/presence", user_ids=bad)
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", bad
            assert (await api.get("/v1/presence")).json() == {"presence": []}
        async with ws_client(srv, alice.token) as a:
            await a.send({"type": "presence_subscribe", "user_ids": list(range(1, 502)), "ref": "big"})
            error = await a.recv_type("error")
            assert error["code"] == "invalid" and error["ref"] == "big"


async def test_typing_reaches_other_members_only_and_is_rate_limited(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, mallory = await srv.user("alice"), await srv.user("bob"), await srv.user("mallory")
        channel = await _group(srv, alice.token, [bob.user_id])
        second = await srv.token(alice)
        async with ws_client(srv, alice.token) as a, ws_client(srv, second) as a2, \
                ws_client(srv, bob.token) as b, ws_client(srv, mallory.token) as m:
            for _ in range(5):  # a burst: one forwarded, the rest dropped quietly
                await a.send({"type": "typing", "channel_id": channel})
            frame = await b.recv_type("typing")
            assert frame == {"type": "typing", "channel_id": channel, "user_id": alice.user_id}
            await _no_frame_of(b, "typing", 1.0)
            await _no_frame_of(a2, "typing", 0.2)  # not the typist's own other connection
            await _no_frame_of(m, "typing", 0.2)  # never a non-member
            # A non-member typing: not_member, nothing forwarded.
            await m.send({"type": "typing", "channel_id": channel, "ref": "t"})
            error = await m.recv_type("error")
            assert error["code"] == "not_member" and error["ref"] == "t"
            await _no_frame_of(b, "typing", 0.5)
            # After the interval, the next one goes through again.
            await trio.sleep(1.2)
            await a.send({"type": "typing", "channel_id": channel})
            assert (await b.recv_type("typing"))["user_id"] == alice.user_id
            assert srv.services.typing.forwarded == 2
            # The bus gathered them: far fewer NOTIFY commits than typing frames.
            assert 1 <= srv.services.bus.flushes <= 7 + srv.services.presence.transitions

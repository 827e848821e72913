"""The HTTP API of PROTOCOL §2 (and the ack of §4), checked from outside over real sockets.

Covered here: login/logout, me, users, channels and members, messages
(send, idempotent retry, history), the send rate limit, sync with long-poll,
health, and the error shape. Receipts, presence, media, push and /metrics
have their own tests.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import trio

from tests.support import Api, ChatUser, http, running_server

CHANNEL_KEYS = {"channel_id", "kind", "name", "member_count", "last_seq", "read_seq", "unread"}
MESSAGE_KEYS = {"channel_id", "seq", "sender_id", "client_msg_id", "text", "media", "created_at",
                "reply_to", "reply_count", "edited_at", "deleted", "mentions", "reactions"}
#: The fields PROTOCOL §10 adds to a message object, as they are for a plain, fresh message.
PLAIN_MESSAGE_FIELDS = {"reply_to": None, "reply_count": 0, "edited_at": None, "deleted": False, "mentions": [],
                        "reactions": []}
ACK_KEYS = {"client_msg_id", "channel_id", "seq", "created_at", "state", "duplicate"}
USER_KEYS = {"user_id", "username", "display_name"}
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def no_traceback(resp: httpx.Response) -> None:
    for marker in ("Traceback", 'File "', "Error:", "asyncpg", "site-packages"):
        assert marker not in resp.text, f"{marker!r} leaked in {resp.status_code} body: {resp.text[:500]}"


def ok(resp: httpx.Response, status: int = 200) -> Any:
    no_traceback(resp)
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()


def err(resp: httpx.Response, status: int, code: str | tuple[str, ...]) -> str:
    """The response is the contract's error object with this status and code; returns the message."""
    no_traceback(resp)
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    codes = (code,) if isinstance(code, str) else code
    assert body["error"]["code"] in codes, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message


def channel_obj(obj: dict[str, Any], *, with_members: bool = False) -> dict[str, Any]:
    expected = CHANNEL_KEYS | ({"members"} if with_members else set())
    assert set(obj) == expected, obj
    assert obj["unread"] == obj["last_seq"] - obj["read_seq"]
    assert isinstance(obj["channel_id"], int) and obj["channel_id"] > 0
    return obj


async def group(api: Api, name: str, *members: ChatUser) -> dict[str, Any]:
    return channel_obj(ok(await api.post("/v1/channels", {"kind": "group", "name": name, "members": [m.user_id for m in members]}), 201))


async def send(api: Api, channel_id: int, client_msg_id: str, text: str = "hi") -> httpx.Response:
    return await api.post(f"/v1/channels/{channel_id}/messages", {"client_msg_id": client_msg_id, "text": text})


async def sent(api: Api, channel_id: int, client_msg_id: str, text: str = "hi") -> dict[str, Any]:
    ack: dict[str, Any] = ok(await send(api, channel_id, client_msg_id, text), 201)
    assert set(ack) == ACK_KEYS, ack
    return ack


# --- health and routing ------------------------------------------------------------


async def test_health_ready_and_unknown_path(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200
        err(await api.get("/v1/nope"), 404, "not_found")
        err(await api.get("/nothing/here"), 404, "not_found")
        # Authenticated, still unknown: the same shape.
        alice = await srv.user("alice")
        err(await api.as_user(alice.token).get("/v1/channels/1/nope"), 404, "not_found")


# --- login, logout, auth ------------------------------------------------------------


async def test_login_issues_a_working_token(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice", password="s3cret pass")
        body = ok(await api.post("/v1/login", {"username": "alice", "password": "s3cret pass", "device_name": "phone"}))
        assert set(body) == {"token", "user_id", "device_id"}
        assert body["user_id"] == alice.user_id
        assert isinstance(body["token"], str) and len(body["token"]) >= 32
        assert isinstance(body["device_id"], int) and body["device_id"] > 0 and body["device_id"] != alice.device_id
        me = ok(await api.as_user(body["token"]).get("/v1/me"))
        assert me == {"user_id": alice.user_id, "username": "alice", "display_name": "Alice", "is_admin": False}
        # A second login is a second device with its own token.
        again = ok(await api.post("/v1/login", {"username": "alice", "password": "s3cret pass", "device_name": "laptop"}))
        assert again["token"] != body["token"] and again["device_id"] != body["device_id"]


async def test_login_refuses_bad_credentials_alike(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        await srv.user("alice", password="right one")
        await srv.user("bob", password="bobs pass")
        await srv.stores.users.disable("bob")
        messages = set()
        for creds in (
            {"username": "alice", "password": "wrong one"},
            {"username": "nobody", "password": "right one"},
            {"username": "bob", "password": "bobs pass"},  # disabled
        ):
            resp = await api.post("/v1/login", {**creds, "device_name": "phone"})
            messages.add(err(resp, 401, "unauthorized"))
            assert "token" not in resp.text
        # Bad password, unknown user and disabled user are not told apart.
        assert len(messages) == 1


async def test_login_rejects_malformed_bodies(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        await srv.user("alice", password="pw")
        full = {"username": "alice", "password": "pw", "device_name": "phone"}
        for missing in full:
            body = {k: v for k, v in full.items() if k != missing}
            err(await api.post("/v1/login", body), 400, ("invalid", "bad_request"))
        err(await api.post("/v1/login", {**full, "username": 5}), 400, ("invalid", "bad_request"))
        err(await api.post("/v1/login", {**full, "device_name": ""}), 400, ("invalid", "bad_request"))
        raw = {"Content-Type": "application/json"}
        err(await api.client.post("/v1/login", content=b"{not json", headers=raw), 400, ("bad_request", "invalid"))
        err(await api.client.post("/v1/login", content=b"", headers=raw), 400, ("bad_request", "invalid"))
        err(await api.client.post("/v1/login", content=b"\xff\xfe", headers=raw), 400, ("bad_request", "invalid"))
        for not_object in ([full], "alice", 42, None):
            err(await api.post("/v1/login", not_object), 400, ("bad_request", "invalid"))


async def test_logout_revokes_only_that_token_at_once(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice", password="pw")
        other = await srv.token(alice, "tablet")
        login = ok(await api.post("/v1/login", {"username": "alice", "password": "pw", "device_name": "phone"}))
        mine = api.as_user(login["token"])
        assert ok(await mine.get("/v1/me"))["user_id"] == alice.user_id
        resp = await mine.post("/v1/logout")
        assert resp.status_code == 204 and resp.content == b""
        err(await mine.get("/v1/me"), 401, "unauthorized")
        err(await mine.get("/v1/channels"), 401, "unauthorized")
        err(await mine.post("/v1/logout"), 401, "unauthorized")
        for token in (alice.token, other):
            assert ok(await api.as_user(token).get("/v1/me"))["user_id"] == alice.user_id


async def test_disabled_user_tokens_stop_working(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        bob = await srv.user("bob")
        assert ok(await api.as_user(bob.token).get("/v1/me"))["username"] == "bob"
        await srv.stores.users.disable("bob")
        err(await api.as_user(bob.token).get("/v1/me"), 401, "unauthorized")


async def test_authentication_is_required(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        await srv.user("alice")
        calls = [
            ("GET", "/v1/me"),
            ("GET", "/v1/users"),
            ("GET", "/v1/channels"),
            ("POST", "/v1/channels"),
            ("GET", "/v1/channels/1"),
            ("PATCH", "/v1/channels/1"),
            ("POST", "/v1/channels/1/members"),
            ("DELETE", "/v1/channels/1/members/1"),
            ("GET", "/v1/channels/1/messages"),
            ("POST", "/v1/channels/1/messages"),
            ("GET", "/v1/sync"),
            ("POST", "/v1/logout"),
        ]
        bad_headers: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic YWxpY2U6cHc="},
            {"Authorization": "Bearer " + "x" * 5000},
        ]
        for headers in bad_headers:
            for method, path in calls:
                resp = await api.client.request(method, path, headers=headers, json={})
                err(resp, 401, "unauthorized")


# --- me and users -----------------------------------------------------------------------


async def test_me_reports_admin_flag(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        root = await srv.user("root", admin=True)
        assert ok(await api.as_user(root.token).get("/v1/me")) == {
            "user_id": root.user_id,
            "username": "root",
            "display_name": "Root",
            "is_admin": True,
        }


async def test_user_search_and_limits(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        await srv.user("albert")
        await srv.user("carol")
        await srv.user("aldo")
        await srv.stores.users.disable("aldo")
        api = api.as_user(alice.token)

        everyone = ok(await api.get("/v1/users"))["users"]
        assert [u["username"] for u in everyone] == ["albert", "alice", "bob", "carol"]  # no disabled user
        for u in everyone:
            assert set(u) == USER_KEYS
        assert {"user_id": bob.user_id, "username": "bob", "display_name": "Bob"} in everyone

        found = ok(await api.get("/v1/users", query="AL"))["users"]
        assert [u["username"] for u in found] == ["albert", "alice"]
        assert ok(await api.get("/v1/users", query="zzz"))["users"] == []
        assert len(ok(await api.get("/v1/users", limit=2))["users"]) == 2
        assert len(ok(await api.get("/v1/users", limit=1, query="al"))["users"]) == 1
        assert len(ok(await api.get("/v1/users", limit=200))["users"]) == 4
        for bad in ("0", "201", "-1", "abc", "1.5", "9" * 30):
            err(await api.get("/v1/users", limit=bad), 400, "invalid")
        err(await api.get("/v1/users", query="x" * 101), 400, "invalid")


# --- channels ------------------------------------------------------------------------------


async def test_create_group_returns_the_channel_object(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        resp = await api.as_user(alice.token).post(
            "/v1/channels", {"kind": "group", "name": "Team ☕", "members": [bob.user_id, carol.user_id, bob.user_id]}
        )
        ch = channel_obj(ok(resp, 201))
        assert ch["kind"] == "group" and ch["name"] == "Team ☕"
        assert ch["member_count"] == 3  # the creator is a member; duplicates count once
        assert (ch["last_seq"], ch["read_seq"], ch["unread"]) == (0, 0, 0)

        full = channel_obj(ok(await api.as_user(carol.token).get(f"/v1/channels/{ch['channel_id']}")), with_members=True)
        assert sorted(full["members"]) == sorted([alice.user_id, bob.user_id, carol.user_id])
        assert {k: full[k] for k in CHANNEL_KEYS} == ch

        # A group of one (just the creator) is allowed.
        solo = await group(api.as_user(alice.token), "notes")
        assert solo["member_count"] == 1


async def test_create_channel_rejects_bad_input(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        api = api.as_user(alice.token)
        for body in (
            {"kind": "group", "members": [bob.user_id]},  # no name
            {"kind": "group", "name": "", "members": []},
            {"kind": "group", "name": "   ", "members": []},
            {"kind": "group", "name": 5, "members": []},
            {"kind": "group", "name": "x" * 101, "members": []},
            {"kind": "group", "name": "ok", "members": "bob"},
            {"kind": "group", "name": "ok", "members": [str(bob.user_id)]},
            {"kind": "group", "name": "ok", "members": [0]},
            {"kind": "group", "name": "ok", "members": [True]},
            {"kind": "channel", "name": "ok", "members": []},
            {"name": "ok", "members": []},
        ):
            err(await api.post("/v1/channels", body), 400, "invalid")
        err(await api.post("/v1/channels", {"kind": "group", "name": "ok", "members": [bob.user_id, 999999]}), 404, "not_found")
        assert ok(await api.get("/v1/channels"))["channels"] == []


async def test_dm_is_idempotent_per_pair(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        first = channel_obj(ok(await api.as_user(alice.token).post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 201))
        assert first["kind"] == "dm" and first["name"] is None and first["member_count"] == 2
        again = channel_obj(ok(await api.as_user(alice.token).post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 200))
        other_side = channel_obj(ok(await api.as_user(bob.token).post("/v1/channels", {"kind": "dm", "members": [alice.user_id]}), 200))
        assert again == first == other_side
        # Another pair, another channel.
        third = channel_obj(ok(await api.as_user(carol.token).post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 201))
        assert third["channel_id"] != first["channel_id"]
        detail = ok(await api.as_user(bob.token).get(f"/v1/channels/{first['channel_id']}"))
        assert sorted(detail["members"]) == sorted([alice.user_id, bob.user_id])
        # Alice's list has exactly one DM despite three opens.
        listed = ok(await api.as_user(alice.token).get("/v1/channels"))["channels"]
        assert [c["channel_id"] for c in listed] == [first["channel_id"]]


async def test_dm_rejects_self_unknown_and_bad_members(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        carol = await srv.user("carol")
        await srv.stores.users.disable("carol")
        api = api.as_user(alice.token)
        err(await api.post("/v1/channels", {"kind": "dm", "members": [alice.user_id]}), 400, "invalid")
        err(await api.post("/v1/channels", {"kind": "dm", "members": [999999]}), 404, "not_found")
        err(await api.post("/v1/channels", {"kind": "dm", "members": [carol.user_id]}), 404, "not_found")
        for members in ([], [bob.user_id, carol.user_id], None, bob.user_id, [str(bob.user_id)], [-1], [1.5]):
            err(await api.post("/v1/channels", {"kind": "dm", "members": members}), 400, "invalid")
        err(await api.post("/v1/channels", {"kind": "dm"}), 400, "invalid")
        assert ok(await api.get("/v1/channels"))["channels"] == []


async def test_list_shows_only_the_callers_channels(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        a = api.as_user(alice.token)
        ab = await group(a, "ab", bob)
        ac = await group(a, "ac", carol)
        bc = await group(api.as_user(bob.token), "bc", carol)
        await sent(a, ab["channel_id"], "m1")
        await sent(a, ab["channel_id"], "m2")

        def ids(resp: httpx.Response) -> list[int]:
            channels = ok(resp)["channels"]
            for c in channels:
                channel_obj(c)
            return [c["channel_id"] for c in channels]

        assert sorted(ids(await a.get("/v1/channels"))) == sorted([ab["channel_id"], ac["channel_id"]])
        assert sorted(ids(await api.as_user(bob.token).get("/v1/channels"))) == sorted([ab["channel_id"], bc["channel_id"]])
        assert sorted(ids(await api.as_user(carol.token).get("/v1/channels"))) == sorted([ac["channel_id"], bc["channel_id"]])
        # last_seq and the caller's unread count.
        bobs = {c["channel_id"]: c for c in ok(await api.as_user(bob.token).get("/v1/channels"))["channels"]}
        assert bobs[ab["channel_id"]]["last_seq"] == 2 and bobs[ab["channel_id"]]["unread"] == 2
        assert bobs[ab["channel_id"]]["name"] == "ab" and bobs[ab["channel_id"]]["member_count"] == 2
        assert bobs[bc["channel_id"]]["last_seq"] == 0


async def test_non_members_get_the_same_answer_as_for_missing_channels(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, eve = [await srv.user(n) for n in ("alice", "bob", "eve")]
        ch = await group(api.as_user(alice.token), "private", bob)
        cid = ch["channel_id"]
        await sent(api.as_user(alice.token), cid, "m1", "secret")
        e = api.as_user(eve.token)
        for target in (cid, 999999):
            answers = [
                await e.get(f"/v1/channels/{target}"),
                await e.get(f"/v1/channels/{target}/messages"),
                await e.patch(f"/v1/channels/{target}", {"name": "mine"}),
                await e.post(f"/v1/channels/{target}/members", {"user_ids": [eve.user_id]}),
                await e.delete(f"/v1/channels/{target}/members/{bob.user_id}"),
                await send(e, target, f"x{target}"),
            ]
            for resp in answers:
                err(resp, 403, "not_member")
                assert "secret" not in resp.text and "private" not in resp.text
        # Nothing changed.
        detail = ok(await api.as_user(alice.token).get(f"/v1/channels/{cid}"))
        assert detail["name"] == "private" and sorted(detail["members"]) == sorted([alice.user_id, bob.user_id])
        assert detail["last_seq"] == 1
        # Malformed ids are a 400, not a server error.
        for raw in ("abc", "0", "-1", "1.5", "99999999999999999999999"):
            err(await e.get(f"/v1/channels/{raw}"), 400, "invalid")


async def test_rename_group_only(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        ch = await group(api.as_user(alice.token), "old", bob)
        cid = ch["channel_id"]
        # Any member may rename.
        renamed = channel_obj(ok(await api.as_user(bob.token).patch(f"/v1/channels/{cid}", {"name": "new"})))
        assert renamed["name"] == "new" and renamed["channel_id"] == cid and renamed["member_count"] == 2
        assert ok(await api.as_user(alice.token).get(f"/v1/channels/{cid}"))["name"] == "new"
        for body in ({}, {"name": ""}, {"name": None}, {"name": 3}, {"name": "x" * 101}):
            err(await api.as_user(alice.token).patch(f"/v1/channels/{cid}", body), 400, "invalid")
        err(await api.as_user(alice.token).patch(f"/v1/channels/{cid}", [1]), 400, ("bad_request", "invalid"))
        dm = ok(await api.as_user(alice.token).post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 201)
        err(await api.as_user(alice.token).patch(f"/v1/channels/{dm['channel_id']}", {"name": "dm"}), 400, "invalid")
        assert ok(await api.as_user(alice.token).get(f"/v1/channels/{dm['channel_id']}"))["name"] is None


async def test_add_members(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol, dave, eve = [await srv.user(n) for n in ("alice", "bob", "carol", "dave", "eve")]
        ch = await group(api.as_user(alice.token), "team", bob)
        cid = ch["channel_id"]
        # Any member (not only the creator) may add.
        added = channel_obj(ok(await api.as_user(bob.token).post(f"/v1/channels/{cid}/members", {"user_ids": [carol.user_id, dave.user_id]})))
        assert added["member_count"] == 4 and added["channel_id"] == cid
        detail = ok(await api.as_user(carol.token).get(f"/v1/channels/{cid}"))
        assert sorted(detail["members"]) == sorted(u.user_id for u in (alice, bob, carol, dave))
        assert cid in [c["channel_id"] for c in ok(await api.as_user(dave.token).get("/v1/channels"))["channels"]]
        # Adding an existing member changes nothing.
        again = ok(await api.as_user(alice.token).post(f"/v1/channels/{cid}/members", {"user_ids": [carol.user_id]}))
        assert again["member_count"] == 4
        # A non-member may not add (itself or anyone).
        err(await api.as_user(eve.token).post(f"/v1/channels/{cid}/members", {"user_ids": [eve.user_id]}), 403, "not_member")
        # Bad input.
        a = api.as_user(alice.token)
        bad_bodies: list[dict[str, Any]] = [{}, {"user_ids": []}, {"user_ids": "x"}, {"user_ids": [0]}, {"user_ids": [True]}]
        for body in bad_bodies:
            err(await a.post(f"/v1/channels/{cid}/members", body), 400, "invalid")
        err(await a.post(f"/v1/channels/{cid}/members", {"user_ids": [eve.user_id, 999999]}), 404, "not_found")
        assert ok(await a.get(f"/v1/channels/{cid}"))["member_count"] == 4  # nothing half-added
        # Not into a DM.
        dm = ok(await a.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 201)
        err(await a.post(f"/v1/channels/{dm['channel_id']}/members", {"user_ids": [carol.user_id]}), 400, "invalid")
        assert ok(await a.get(f"/v1/channels/{dm['channel_id']}"))["member_count"] == 2


async def test_remove_members(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol, dave = [await srv.user(n) for n in ("alice", "bob", "carol", "dave")]
        root = await srv.user("root", admin=True)
        a, b, c = api.as_user(alice.token), api.as_user(bob.token), api.as_user(carol.token)
        ch = await group(a, "team", bob, carol, dave, root)
        cid = ch["channel_id"]

        # A non-creator member may not remove others.
        err(await b.delete(f"/v1/channels/{cid}/members/{carol.user_id}"), 403, "forbidden")
        assert ok(await a.get(f"/v1/channels/{cid}"))["member_count"] == 5
        # It may leave.
        resp = await b.delete(f"/v1/channels/{cid}/members/{bob.user_id}")
        assert resp.status_code == 204 and resp.content == b""
        err(await b.get(f"/v1/channels/{cid}"), 403, "not_member")
        assert cid not in [x["channel_id"] for x in ok(await b.get("/v1/channels"))["channels"]]
        err(await send(b, cid, "after-leave"), 403, "not_member")
        # The creator may remove others.
        assert (await a.delete(f"/v1/channels/{cid}/members/{carol.user_id}")).status_code == 204
        err(await c.get(f"/v1/channels/{cid}/messages"), 403, "not_member")
        # So may an admin who is not the creator.
        assert (await api.as_user(root.token).delete(f"/v1/channels/{cid}/members/{dave.user_id}")).status_code == 204
        detail = ok(await a.get(f"/v1/channels/{cid}"))
        assert sorted(detail["members"]) == sorted([alice.user_id, root.user_id]) and detail["member_count"] == 2
        # Each removal reached the removed user's inbox too, then nothing more.
        carols = ok(await c.get("/v1/sync"))["events"]
        assert carols[-1] == {
            "inbox_seq": len(carols),
            "kind": "member",
            "channel_id": cid,
            "user_id": carol.user_id,
            "change": "removed",
            "by": alice.user_id,
        }
        assert [e["change"] for e in carols if e["kind"] == "member"] == ["removed", "removed"]  # bob's, then hers
        alices = ok(await a.get("/v1/sync"))["events"]
        removed = [(e["user_id"], e["by"]) for e in alices if e["kind"] == "member"]
        assert removed == [(bob.user_id, bob.user_id), (carol.user_id, alice.user_id), (dave.user_id, root.user_id)]
        # Removing someone who is not a member.
        err(await a.delete(f"/v1/channels/{cid}/members/{bob.user_id}"), 404, "not_found")
        err(await a.delete(f"/v1/channels/{cid}/members/abc"), 400, "invalid")
        # Nobody leaves a DM.
        dm = ok(await a.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]}), 201)
        err(await a.delete(f"/v1/channels/{dm['channel_id']}/members/{alice.user_id}"), 400, "invalid")


async def test_max_group_members(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"max_group_members": 3}}) as srv, http(srv) as api:
        alice, bob, carol, dave, eve = [await srv.user(n) for n in ("alice", "bob", "carol", "dave", "eve")]
        a = api.as_user(alice.token)
        # Exactly at the limit (the creator counts).
        ch = await group(a, "three", bob, carol)
        assert ch["member_count"] == 3
        err(await a.post(f"/v1/channels/{ch['channel_id']}/members", {"user_ids": [dave.user_id]}), 413, "too_large")
        err(await a.post(f"/v1/channels/{ch['channel_id']}/members", {"user_ids": [dave.user_id, eve.user_id]}), 413, "too_large")
        assert ok(await a.get(f"/v1/channels/{ch['channel_id']}"))["member_count"] == 3
        # Creating past the limit.
        err(await a.post("/v1/channels", {"kind": "group", "name": "four", "members": [bob.user_id, carol.user_id, dave.user_id]}), 413, "too_large")
        err(
            await a.post("/v1/channels", {"kind": "group", "name": "five", "members": [bob.user_id, carol.user_id, dave.user_id, eve.user_id]}),
            413,
            "too_large",
        )
        small = await group(a, "two", bob)
        err(
            await a.post(f"/v1/channels/{small['channel_id']}/members", {"user_ids": [carol.user_id, dave.user_id, eve.user_id]}),
            413,
            "too_large",
        )
        assert [c["name"] for c in ok(await a.get("/v1/channels"))["channels"]] == ["three", "two"]
        # Re-adding existing members is not growth.
        assert ok(await a.post(f"/v1/channels/{ch['channel_id']}/members", {"user_ids": [bob.user_id]}))["member_count"] == 3


# --- messages --------------------------------------------------------------------------------


async def test_send_acks_after_commit_and_retry_is_idempotent(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        a = api.as_user(alice.token)
        cid = (await group(a, "team", bob))["channel_id"]
        ack = await sent(a, cid, "c-1", "hello")
        assert ack["client_msg_id"] == "c-1" and ack["channel_id"] == cid and ack["seq"] == 1
        assert ack["state"] == "sent" and ack["duplicate"] is False
        assert RFC3339_MS.match(ack["created_at"]), ack["created_at"]
        second = await sent(a, cid, "c-2", "again")
        assert second["seq"] == 2

        # The same client_msg_id again, even from another device and with other text: the original ack.
        retry = ok(await send(api.as_user(await srv.token(alice)), cid, "c-1", "different"), 200)
        assert retry == {**ack, "duplicate": True}
        msgs = ok(await a.get(f"/v1/channels/{cid}/messages"))["messages"]
        assert [(m["seq"], m["client_msg_id"], m["text"]) for m in msgs] == [(2, "c-2", "again"), (1, "c-1", "hello")]
        assert ok(await a.get(f"/v1/channels/{cid}"))["last_seq"] == 2
        # Unique per sender, not per channel: "c-1" into another channel is still the original send.
        other = (await group(a, "other", bob))["channel_id"]
        assert ok(await send(a, other, "c-1", "elsewhere"), 200) == {**ack, "duplicate": True}
        assert ok(await a.get(f"/v1/channels/{other}"))["last_seq"] == 0
        # client_msg_id is unique per sender: bob may use "c-1" too.
        assert (await sent(api.as_user(bob.token), cid, "c-1", "bob's"))["seq"] == 3

        m = ok(await api.as_user(bob.token).get(f"/v1/channels/{cid}/messages", after=0, limit=1))["messages"][0]
        assert set(m) == MESSAGE_KEYS
        assert m == {
            "channel_id": cid,
            "seq": 1,
            "sender_id": alice.user_id,
            "client_msg_id": "c-1",
            "text": "hello",
            "media": [],
            "created_at": ack["created_at"],
            **PLAIN_MESSAGE_FIELDS,
        }


async def test_send_checks(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"max_text_chars": 10}}) as srv, http(srv) as api:
        alice, bob, eve = await srv.user("alice"), await srv.user("bob"), await srv.user("eve")
        a = api.as_user(alice.token)
        cid = (await group(a, "team", bob))["channel_id"]
        assert (await sent(a, cid, "ok-10", "x" * 10))["seq"] == 1
        assert (await sent(a, cid, "ok-emoji", "é" * 10))["seq"] == 2  # characters, not bytes
        err(await send(a, cid, "long", "x" * 11), 413, "too_large")
        err(await send(api.as_user(eve.token), cid, "eve-1", "hi"), 403, "not_member")
        path = f"/v1/channels/{cid}/messages"
        for body in (
            {"text": "no id"},
            {"client_msg_id": "", "text": "hi"},
            {"client_msg_id": "x" * 65, "text": "hi"},
            {"client_msg_id": 7, "text": "hi"},
            {"client_msg_id": "t1"},
            {"client_msg_id": "t2", "text": 5},
            {"client_msg_id": "t3", "text": ["hi"]},
            {"client_msg_id": "t4", "text": ""},
            {"client_msg_id": "t5", "text": "   "},
            {"client_msg_id": "t6", "text": "a\x00b"},
            {"client_msg_id": "t7", "text": "hi", "media_ids": "x"},
            {"client_msg_id": "t8", "text": "hi", "media_ids": [0]},
        ):
            err(await a.post(path, body), 400, "invalid")
        err(await a.post(path, ["hi"]), 400, ("bad_request", "invalid"))
        err(await a.client.post(path, content=b"{", headers={"Authorization": f"Bearer {alice.token}"}), 400, ("bad_request", "invalid"))
        # A 64-char client_msg_id is fine.
        assert (await sent(a, cid, "k" * 64, "max id"))["client_msg_id"] == "k" * 64
        # Nothing else was stored.
        msgs = ok(await a.get(path))["messages"]
        assert [m["seq"] for m in msgs] == [3, 2, 1]


async def test_history_paging(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        a, b = api.as_user(alice.token), api.as_user(bob.token)
        cid = (await group(a, "team", bob))["channel_id"]
        assert ok(await b.get(f"/v1/channels/{cid}/messages"))["messages"] == []
        for i in range(1, 61):
            await sent(a if i % 2 else b, cid, f"m{i}", f"text {i}")
        path = f"/v1/channels/{cid}/messages"

        def seqs(resp: httpx.Response) -> list[int]:
            msgs = ok(resp)["messages"]
            for m in msgs:
                assert set(m) == MESSAGE_KEYS
                assert m["text"] == f"text {m['seq']}" and m["client_msg_id"] == f"m{m['seq']}"
                assert m["sender_id"] == (alice.user_id if m["seq"] % 2 else bob.user_id)
                assert RFC3339_MS.match(m["created_at"])
            return [m["seq"] for m in msgs]

        assert seqs(await b.get(path)) == list(range(60, 10, -1))  # default 50, newest first
        assert seqs(await b.get(path, limit=3)) == [60, 59, 58]
        assert seqs(await b.get(path, before=10, limit=3)) == [9, 8, 7]
        assert seqs(await b.get(path, before=3)) == [2, 1]
        assert seqs(await b.get(path, before=1)) == []
        assert seqs(await b.get(path, after=0, limit=3)) == [1, 2, 3]
        assert seqs(await b.get(path, after=55)) == [56, 57, 58, 59, 60]
        assert seqs(await b.get(path, after=60)) == []
        assert seqs(await b.get(path, after=0, limit=200)) == list(range(1, 61))
        assert seqs(await b.get(path, limit=1)) == [60]
        # Walking back page by page sees every message once.
        seen: list[int] = []
        before = None
        while True:
            page = seqs(await b.get(path, limit=7, **({"before": before} if before else {})))
            if not page:
                break
            seen += page
            before = page[-1]
        assert seen == list(range(60, 0, -1))
        for bad in ({"limit": 0}, {"limit": 201}, {"limit": "x"}, {"before": "x"}, {"after": -1}, {"before": 5, "after": 1}):
            err(await b.get(path, **bad), 400, "invalid")


async def test_send_rate_limit(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"send_rate_per_s": 1, "send_burst": 2}}) as srv, http(srv) as api:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        a = api.as_user(alice.token)
        cid = (await group(a, "team", bob))["channel_id"]
        await sent(a, cid, "r1")
        await sent(a, cid, "r2")
        resp = await send(a, cid, "r3")
        err(resp, 429, "rate_limited")
        retry_after = int(resp.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        # Nothing was stored for the refused send; another user has its own bucket.
        assert ok(await a.get(f"/v1/channels/{cid}"))["last_seq"] == 2
        assert (await sent(api.as_user(bob.token), cid, "b1"))["seq"] == 3
        # After the advertised wait, the same send goes through.
        await trio.sleep(retry_after)
        assert (await sent(a, cid, "r3"))["seq"] == 4


# --- sync ---------------------------------------------------------------------------------------


async def test_sync_returns_inbox_events_with_cursor(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        a, b = api.as_user(alice.token), api.as_user(bob.token)
        assert ok(await b.get("/v1/sync")) == {"events": [], "cursor": 0}
        cid = (await group(a, "team", bob))["channel_id"]
        ack1 = await sent(a, cid, "s1", "one")
        ack2 = await sent(b, cid, "s2", "two")
        ok(await a.patch(f"/v1/channels/{cid}", {"name": "renamed"}))
        ok(await a.post(f"/v1/channels/{cid}/members", {"user_ids": [carol.user_id]}))

        body = ok(await b.get("/v1/sync", after=0))
        events = body["events"]
        assert [e["inbox_seq"] for e in events] == [1, 2, 3, 4, 5]
        assert body["cursor"] == 5
        assert events[0] == {"inbox_seq": 1, "kind": "channel", "channel_id": cid, "change": "created", "name": "team"}
        assert events[1] == {
            "inbox_seq": 2,
            "kind": "message",
            "channel_id": cid,
            "seq": 1,
            "sender_id": alice.user_id,
            "client_msg_id": "s1",
            "text": "one",
            "media": [],
            "created_at": ack1["created_at"],
            **PLAIN_MESSAGE_FIELDS,
        }
        assert events[2]["kind"] == "message" and events[2]["seq"] == 2 and events[2]["sender_id"] == bob.user_id
        assert events[2]["created_at"] == ack2["created_at"] and events[2]["text"] == "two"
        assert events[3] == {"inbox_seq": 4, "kind": "channel", "channel_id": cid, "change": "renamed", "name": "renamed"}
        assert events[4] == {
            "inbox_seq": 5,
            "kind": "member",
            "channel_id": cid,
            "user_id": carol.user_id,
            "change": "added",
            "by": alice.user_id,
        }
        # The sender's inbox holds the same events (its other devices learn of its messages).
        assert ok(await a.get("/v1/sync"))["events"] == events
        # Paging with limit and the cursor.
        page1 = ok(await b.get("/v1/sync", after=0, limit=2))
        assert [e["inbox_seq"] for e in page1["events"]] == [1, 2] and page1["cursor"] == 2
        page2 = ok(await b.get("/v1/sync", after=page1["cursor"], limit=2))
        assert [e["inbox_seq"] for e in page2["events"]] == [3, 4] and page2["cursor"] == 4
        page3 = ok(await b.get("/v1/sync", after=page2["cursor"], limit=2))
        assert [e["inbox_seq"] for e in page3["events"]] == [5] and page3["cursor"] == 5
        assert ok(await b.get("/v1/sync", after=5)) == {"events": [], "cursor": 5}
        # Carol's inbox starts where she joined: only the member event.
        carols = ok(await api.as_user(carol.token).get("/v1/sync"))
        assert [e["kind"] for e in carols["events"]] == ["member"] and carols["cursor"] == 1
        for bad in ({"limit": 0}, {"after": -1}, {"after": "x"}, {"timeout_ms": -1}, {"timeout_ms": 60001}, {"timeout_ms": "1s"}):
            err(await b.get("/v1/sync", **bad), 400, "invalid")


async def test_sync_long_poll_times_out_empty(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice")
        a = api.as_user(alice.token)
        await group(a, "solo")
        start = trio.current_time()
        body = ok(await a.get("/v1/sync", after=1, timeout_ms=600))
        elapsed = trio.current_time() - start
        assert body == {"events": [], "cursor": 1}
        assert 0.55 <= elapsed < 3, elapsed
        # With events already there it answers at once.
        start = trio.current_time()
        body = ok(await a.get("/v1/sync", after=0, timeout_ms=10000))
        assert [e["inbox_seq"] for e in body["events"]] == [1]
        assert trio.current_time() - start < 2


async def test_sync_long_poll_wakes_on_a_send(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        a = api.as_user(alice.token)
        cid = (await group(a, "team", bob))["channel_id"]
        result: dict[str, Any] = {}

        async def poll() -> None:
            # Its own client: a second connection, as another device would have.
            async with http(srv, bob.token) as b:
                start = trio.current_time()
                result["body"] = ok(await b.get("/v1/sync", after=1, timeout_ms=20000))
                result["elapsed"] = trio.current_time() - start

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.5)
                assert "body" not in result, "the long-poll answered before anything happened"
                ack = await sent(a, cid, "wake", "wake up")
        assert result["elapsed"] < 5, result
        assert result["body"]["cursor"] == 2
        [event] = result["body"]["events"]
        assert event["inbox_seq"] == 2 and event["kind"] == "message"
        assert event["seq"] == ack["seq"] and event["text"] == "wake up" and event["sender_id"] == alice.user_id


async def test_method_not_allowed_keeps_the_error_shape(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        resp = await api.client.put("/v1/login", json={})
        no_traceback(resp)
        assert resp.status_code == 405
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}



async def test_hostile_bodies_and_queries_are_client_errors(db_url: str) -> None:
    async with running_server(db_url) as srv, http(srv) as api:
        alice = await srv.user("alice", password="pw")
        a = api.as_user(alice.token)
        h = {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"}
        cid = (await group(a, "team"))["channel_id"]
        for path, content in (
            ("/v1/channels", b"[" * 100_000),  # nested too deep to parse
            ("/v1/channels", b'{"kind": "group", "name": "\\ud800", "members": []}'),  # a lone surrogate
            ("/v1/login", b'{"username": "\\udfff", "password": "pw", "device_name": "d"}'),
            (f"/v1/channels/{cid}/messages", b'{"client_msg_id": "\\ud800", "text": "x"}'),
            (f"/v1/channels/{cid}/messages", b'{"client_msg_id": "s", "text": "a\\ud800b"}'),
            (f"/v1/channels/{cid}/messages", b'{"client_msg_id": "s", "text": "x", "media_ids": [NaN]}'),
            ("/v1/channels", b'{"kind": "dm", "members": [' + b"9" * 5000 + b"]}"),
        ):
            err(await a.client.post(path, content=content, headers=h), 400, ("bad_request", "invalid"))
        err(await a.get("/v1/users", query="a\x00b"), 400, "invalid")
        err(await a.get("/v1//me"), 404, "not_found")
        assert ok(await a.get(f"/v1/channels/{cid}"))["last_seq"] == 0


async def test_early_answers_leave_the_connection_usable(db_url: str) -> None:
    """An answer given before the body was read (413, 404, 401) does not wedge the keep-alive connection."""
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        h = {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=srv.url, timeout=5) as client:
            for path, size, status, code, headers in (
                ("/v1/channels", 2 << 20, 413, "too_large", h),
                ("/v1/nope", 500_000, 404, "not_found", h),
                ("/v1/channels", 900_000, 401, "unauthorized", {**h, "Authorization": "Bearer wrong"}),
            ):
                for _ in range(2):
                    err(await client.post(path, content=b" " * size, headers=headers), status, code)
                    assert ok(await client.get("/v1/me", headers=h))["user_id"] == alice.user_id

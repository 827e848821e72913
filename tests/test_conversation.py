"""PROTOCOL §10 from outside: edits, deletions, reactions, threads, mentions and search.

Real server, real PostgreSQL, real HTTP and WebSocket clients. Each rule has
its test; each new endpoint is tried as anonymous, non-member, member,
sender, creator and admin where the rule distinguishes them.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Databases
from tests.support import Api, ChatUser, RunningServer, http, running_server, ws_client

THUMBS = "\U0001F44D"
FAMILY = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # a ZWJ sequence: one emoji
FLAG = "\U0001F1EB\U0001F1F7"


async def _group(srv: RunningServer, owner: ChatUser, name: str, members: list[ChatUser]) -> int:
    async with http(srv, owner.token) as api:
        r = await api.post("/v1/channels", {"kind": "group", "name": name, "members": [m.user_id for m in members]})
        assert r.status_code == 201, r.text
        return int(r.json()["channel_id"])


async def _send(api: Api, channel: int, cid: str, text: str, **extra: Any) -> httpx.Response:
    return await api.post(f"/v1/channels/{channel}/messages", {"client_msg_id": cid, "text": text, **extra})


async def _sent(api: Api, channel: int, cid: str, text: str, **extra: Any) -> int:
    r = await _send(api, channel, cid, text, **extra)
    assert r.status_code == 201, r.text
    return int(r.json()["seq"])


async def _history(api: Api, channel: int, **params: Any) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/channels/{channel}/messages", **params)
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def _message(api: Api, channel: int, seq: int) -> dict[str, Any]:
    found = [m for m in await _history(api, channel, after=seq - 1, limit=1)]
    assert len(found) == 1 and found[0]["seq"] == seq
    return found[0]


async def _events(api: Api, after: int = 0) -> list[dict[str, Any]]:
    r = await api.get("/v1/sync", after=after, limit=1000)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


async def _sql(srv: RunningServer, statement: str, *args: Any) -> list[Any]:
    async def unit(conn: Any) -> list[Any]:
        return list(await conn.fetch(statement, *args))

    return await srv.stores.db.transaction(unit)


# --- message object ------------------------------------------------------------------


async def test_message_object_has_the_added_fields(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv, alice.token) as api:
            seq = await _sent(api, channel, "m1", "plain")
            message = await _message(api, channel, seq)
        assert message["reply_to"] is None and message["reply_count"] == 0
        assert message["edited_at"] is None and message["deleted"] is False
        assert message["mentions"] == [] and message["reactions"] == [] and message["media"] == []


# --- edits -----------------------------------------------------------------------------


async def test_edit_by_sender_updates_history_events_on_every_device_and_keeps_the_history(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        bob_offline = await srv.token(bob, "phone")  # a second device that is not connected
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv, alice.token) as api, ws_client(srv, bob.token) as live:
            seq = await _sent(api, channel, "m1", "helo wrld")
            _, cursor = await live.sync(0)
            r = await api.patch(f"/v1/channels/{channel}/messages/{seq}", {"text": "hello world"})
            assert r.status_code == 200, r.text
            edited = r.json()
            assert edited["seq"] == seq and edited["text"] == "hello world" and edited["edited_at"].endswith("Z")
            assert (await api.patch(f"/v1/channels/{channel}/messages/{seq}", {"text": "hello, world"})).status_code == 200
            first = await live.recv_type("event")
            assert first["kind"] == "edit" and first["inbox_seq"] == cursor + 1
            assert set(first) == {"type", "inbox_seq", "kind", "channel_id", "seq", "text", "edited_at", "mentions"}
            assert first["channel_id"] == channel and first["seq"] == seq
            history = await _history(api, channel)
        assert [m["text"] for m in history] == ["hello, world"] and history[0]["edited_at"] is not None
        # The offline device (and the sender's own inbox) converge through sync.
        for token in (bob_offline, alice.token):
            async with http(srv, token) as api:
                edits = [e for e in await _events(api) if e["kind"] == "edit"]
            assert len(edits) == 2 and all(e["seq"] == seq and e["channel_id"] == channel for e in edits)
        # Append-only history: the text as sent, then each edit; the message's text is the last.
        rows = await _sql(srv, "SELECT version, text, edited_by FROM message_edits WHERE channel_id = $1 ORDER BY version",
                          channel)
        assert [(r["version"], r["text"], r["edited_by"]) for r in rows] == [
            (0, "helo wrld", alice.user_id), (1, "hello world", alice.user_id), (2, "hello, world", alice.user_id)]
        assert await srv.stores.checks.verify() == []


async def test_edit_authz_and_text_rules(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"max_text_chars": 20}}) as srv:
        alice, bob, eve = await srv.user("alice"), await srv.user("bob"), await srv.user("eve")
        root = await srv.user("root", admin=True)
        channel = await _group(srv, alice, "g", [bob, root])
        async with http(srv) as anon:
            seq = await _sent(anon.as_user(bob.token), channel, "b1", "bob's words")
            path = f"/v1/channels/{channel}/messages/{seq}"
            _error(await anon.patch(path, {"text": "x"}), 401, "unauthorized")
            _error(await anon.as_user(eve.token).patch(path, {"text": "x"}), 403, "not_member")
            _error(await anon.as_user(alice.token).patch(path, {"text": "x"}), 403, "forbidden")  # the creator
            _error(await anon.as_user(root.token).patch(path, {"text": "x"}), 403, "forbidden")  # an admin
            sender = anon.as_user(bob.token)
            _error(await sender.patch(path, {"text": "x" * 21}), 413, "too_large")
            _error(await sender.patch(path, {"text": "   "}), 400, "invalid")
            _error(await sender.patch(path, {}), 400, "invalid")
            _error(await sender.patch(f"/v1/channels/{channel}/messages/99", {"text": "x"}), 404, "not_found")
            assert (await sender.patch(path, {"text": "bob's new words"})).status_code == 200
            assert (await sender.delete(path)).status_code == 204
            _error(await sender.patch(path, {"text": "back"}), 404, "not_found")  # a tombstone stays one


# --- deletions -------------------------------------------------------------------------


async def test_delete_leaves_a_tombstone_and_erases_everything(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        bob_offline = await srv.token(bob, "phone")
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv, alice.token) as api, ws_client(srv, bob.token) as live:
            await _sent(api, channel, "m1", "before")
            seq = await _sent(api, channel, "m2", "secret plan @bob")
            await _sent(api, channel, "m3", "after")
            assert (await api.patch(f"/v1/channels/{channel}/messages/{seq}", {"text": "secret plan v2 @bob"})).status_code == 200
            await api.as_user(bob.token).put(f"/v1/channels/{channel}/messages/{seq}/reactions/{THUMBS}")
            _, cursor = await live.sync(0)
            r = await api.delete(f"/v1/channels/{channel}/messages/{seq}")
            assert r.status_code == 204, r.text
            event = await live.recv_type("event")
            assert event == {"type": "event", "inbox_seq": cursor + 1, "kind": "delete",
                             "channel_id": channel, "seq": seq, "by": alice.user_id}
            # Deleting again is idempotent: 204 and no second event.
            assert (await api.delete(f"/v1/channels/{channel}/messages/{seq}")).status_code == 204
            history = await _history(api, channel)
            search = (await api.get("/v1/search", q="secret")).json()["results"]
        assert [m["seq"] for m in history] == [3, 2, 1]  # seq kept, no gap
        tomb = history[1]
        assert tomb["deleted"] is True and tomb["text"] == "" and tomb["media"] == []
        assert tomb["reactions"] == [] and tomb["mentions"] == []
        assert search == []
        async with http(srv, bob_offline) as api:
            events = await _events(api)
            mentions = (await api.get("/v1/mentions")).json()["messages"]
        assert [e["kind"] for e in events if e.get("seq") == seq] == ["message", "edit", "reaction", "delete"]
        # Every event that carried the text now shows the tombstone.
        assert all(e.get("text", "") == "" for e in events if e.get("seq") == seq)
        assert mentions == []
        for table in ("message_edits", "mentions", "reactions"):
            assert await _sql(srv, f"SELECT 1 FROM {table} WHERE channel_id = $1 AND seq = $2", channel, seq) == []
        row = (await _sql(srv, "SELECT text, search::text AS s FROM messages WHERE channel_id = $1 AND seq = $2",
                          channel, seq))[0]
        assert row["text"] == "" and row["s"] == ""
        assert await srv.stores.checks.verify() == []


@pytest.mark.parametrize("who", ["sender", "creator", "admin_not_member"])
async def test_delete_allowed_to_sender_creator_and_admin(db_url: str, who: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        root = await srv.user("root", admin=True)
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv, bob.token) as api:
            seq = await _sent(api, channel, "b1", "bob says")
            token = {"sender": bob.token, "creator": alice.token, "admin_not_member": root.token}[who]
            r = await api.as_user(token).delete(f"/v1/channels/{channel}/messages/{seq}")
            assert r.status_code == 204, r.text
            assert (await _message(api, channel, seq))["deleted"] is True
            by = {"sender": bob, "creator": alice, "admin_not_member": root}[who].user_id
            assert [e["by"] for e in await _events(api) if e["kind"] == "delete"] == [by]


async def test_delete_refused_to_anonymous_non_member_and_other_members(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, carol, eve = [await srv.user(n) for n in ("alice", "bob", "carol", "eve")]
        channel = await _group(srv, alice, "g", [bob, carol])
        async with http(srv) as anon:
            seq = await _sent(anon.as_user(bob.token), channel, "b1", "bob says")
            path = f"/v1/channels/{channel}/messages/{seq}"
            _error(await anon.delete(path), 401, "unauthorized")
            _error(await anon.as_user(eve.token).delete(path), 403, "not_member")
            _error(await anon.as_user(carol.token).delete(path), 403, "forbidden")
            _error(await anon.as_user(bob.token).delete(f"/v1/channels/{channel}/messages/77"), 404, "not_found")
            assert (await _message(anon.as_user(bob.token), channel, seq))["text"] == "bob says"


# --- reactions -------------------------------------------------------------------------


async def test_reactions_idempotent_with_counts_me_and_events(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        bob_offline = await srv.token(bob, "phone")
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv, alice.token) as a:
            b = a.as_user(bob.token)
            seq = await _sent(a, channel, "m1", "vote")
            base = f"/v1/channels/{channel}/messages/{seq}/reactions"
            for api, emoji in ((a, THUMBS), (a, THUMBS), (b, THUMBS), (b, ":party_parrot:"), (a, FAMILY), (a, FLAG)):
                r = await api.put(f"{base}/{emoji}")
                assert r.status_code == 204, r.text
            seen_by_alice = (await _message(a, channel, seq))["reactions"]
            seen_by_bob = (await _message(b, channel, seq))["reactions"]
            assert seen_by_alice == [
                {"emoji": THUMBS, "count": 2, "me": True},
                {"emoji": ":party_parrot:", "count": 1, "me": False},
                {"emoji": FAMILY, "count": 1, "me": True},
                {"emoji": FLAG, "count": 1, "me": True},
            ]
            assert seen_by_bob[0] == {"emoji": THUMBS, "count": 2, "me": True}
            assert seen_by_bob[2] == {"emoji": FAMILY, "count": 1, "me": False}
            for _ in range(2):
                assert (await a.delete(f"{base}/{THUMBS}")).status_code == 204
            assert (await _message(b, channel, seq))["reactions"][0] == {"emoji": THUMBS, "count": 1, "me": True}
        async with http(srv, bob_offline) as api:
            reactions = [e for e in await _events(api) if e["kind"] == "reaction"]
        # One event per change, none for the repeats.
        assert [(e["user_id"], e["emoji"], e["change"]) for e in reactions] == [
            (alice.user_id, THUMBS, "added"), (bob.user_id, THUMBS, "added"), (bob.user_id, ":party_parrot:", "added"),
            (alice.user_id, FAMILY, "added"), (alice.user_id, FLAG, "added"), (alice.user_id, THUMBS, "removed")]
        assert all(e["channel_id"] == channel and e["seq"] == seq for e in reactions)


@pytest.mark.parametrize("emoji", ["a", ":Upper:", "::", ":" + "a" * 33 + ":", "hello", THUMBS + THUMBS, "\u200d",
                                   THUMBS + "\u200d", "%00", "1"])
async def test_reaction_emoji_must_be_one_emoji_or_a_short_name(db_url: str, emoji: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice, "g", [])
        async with http(srv, alice.token) as api:
            seq = await _sent(api, channel, "m1", "x")
            r = await api.put(f"/v1/channels/{channel}/messages/{seq}/reactions/{emoji}")
            _error(r, 400, "invalid")


async def test_reaction_authz(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, eve = await srv.user("alice"), await srv.user("bob"), await srv.user("eve")
        channel = await _group(srv, alice, "g", [bob])
        async with http(srv) as anon:
            seq = await _sent(anon.as_user(alice.token), channel, "m1", "x")
            path = f"/v1/channels/{channel}/messages/{seq}/reactions/:ok:"
            _error(await anon.put(path), 401, "unauthorized")
            _error(await anon.as_user(eve.token).put(path), 403, "not_member")
            _error(await anon.as_user(eve.token).delete(path), 403, "not_member")
            assert (await anon.as_user(bob.token).put(path)).status_code == 204  # any member
            _error(await anon.as_user(bob.token).put(f"/v1/channels/{channel}/messages/9/reactions/:ok:"), 404,
                   "not_found")
            assert (await anon.as_user(alice.token).delete(f"/v1/channels/{channel}/messages/{seq}")).status_code == 204
            _error(await anon.as_user(bob.token).put(path), 404, "not_found")  # a tombstone takes none


async def test_many_concurrent_reactions_and_sends_do_not_deadlock(db_url: str) -> None:
    async with running_server(db_url) as srv:
        users = [await srv.user(f"u{i}") for i in range(24)]
        channel = await _group(srv, users[0], "busy", users[1:])
        async with http(srv, users[0].token) as api:
            seq = await _sent(api, channel, "root", "react to me")
            failures: list[str] = []

            async def react(user: ChatUser) -> None:
                for emoji in (THUMBS, ":fire:"):
                    r = await api.as_user(user.token).put(f"/v1/channels/{channel}/messages/{seq}/reactions/{emoji}")
                    if r.status_code != 204:
                        failures.append(r.text)

            async def send(user: ChatUser) -> None:
                for i in range(3):
                    r = await _send(api.as_user(user.token), channel, f"s{user.user_id}-{i}", "meanwhile", reply_to=seq)
                    if r.status_code != 201:
                        failures.append(r.text)

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for user in users:
                        nursery.start_soon(react, user)
                        nursery.start_soon(send, user)
            assert failures == []
            message = await _message(api, channel, seq)
        assert sorted((r["emoji"], r["count"], r["me"]) for r in message["reactions"]) == [
            (":fire:", 24, True), (THUMBS, 24, True)]
        assert message["reply_count"] == 72
        assert await srv.stores.checks.verify() == []


# --- replies and threads ---------------------------------------------------------------


async def test_replies_over_rest_and_websocket_attach_to_the_root(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        channel = await _group(srv, alice, "g", [bob])
        other = await _group(srv, alice, "other", [])
        async with http(srv, alice.token) as api, ws_client(srv, bob.token) as ws:
            root = await _sent(api, channel, "r", "root")
            await _sent(api, channel, "x", "unrelated")
            first = await _sent(api, channel, "a1", "first reply", reply_to=root)
            await ws.sync(0)
            await ws.send({"type": "send", "channel_id": channel, "client_msg_id": "b1", "text": "reply to the reply",
                           "reply_to": first, "ref": "b1"})
            # The ack and bob's own message event, in either order.
            frames = {}
            while len(frames) < 2:
                frame = await ws.recv()
                if frame["type"] in ("ack", "event"):
                    frames[frame["type"]] = frame
            assert frames["ack"]["ref"] == "b1"
            event = frames["event"]
            assert event["kind"] == "message" and event["reply_to"] == root  # attached to the root
            await ws.send({"type": "send", "channel_id": channel, "client_msg_id": "b2", "text": "x",
                           "reply_to": 99, "ref": "b2"})
            error = await ws.recv_type("error")
            assert error["code"] == "not_found" and error["ref"] == "b2"
            await ws.send({"type": "send", "channel_id": channel, "client_msg_id": "b3", "text": "x",
                           "reply_to": "1", "ref": "b3"})
            assert (await ws.recv_type("error"))["code"] == "invalid"
            # A seq of another channel is not a message of this one.
            await _sent(api, other, "o1", "elsewhere")
            await _sent(api, other, "o2", "elsewhere")
            await _sent(api, other, "o3", "elsewhere")
            _error(await _send(api, channel, "bad", "x", reply_to=6), 404, "not_found")
            _error(await _send(api, channel, "bad2", "x", reply_to=0), 400, "invalid")
            # A retried reply is a duplicate, counted once.
            dup = await _send(api, channel, "a1", "first reply", reply_to=root)
            assert dup.status_code == 200 and dup.json()["duplicate"] is True
            thread = await _history(api, channel, thread=root)
            assert [m["text"] for m in thread] == ["first reply", "reply to the reply"]
            assert all(m["reply_to"] == root for m in thread)
            assert [m["text"] for m in await _history(api, channel, thread=root, after=first)] == ["reply to the reply"]
            root_message = await _message(api, channel, root)
            assert root_message["reply_count"] == 2 and root_message["reply_to"] is None
            _error(await api.get(f"/v1/channels/{channel}/messages", thread=99), 404, "not_found")
            _error(await api.get(f"/v1/channels/{channel}/messages", thread=root, before=5), 400, "invalid")


async def test_reply_by_a_non_member_is_not_member_whatever_the_target(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, eve = await srv.user("alice"), await srv.user("eve")
        channel = await _group(srv, alice, "g", [])
        async with http(srv, alice.token) as api:
            root = await _sent(api, channel, "r", "root")
            for target in (root, 999):
                _error(await _send(api.as_user(eve.token), channel, f"e{target}", "x", reply_to=target), 403,
                       "not_member")
            _error(await api.as_user(eve.token).get(f"/v1/channels/{channel}/messages", thread=root), 403, "not_member")


# --- mentions --------------------------------------------------------------------------


async def test_mentions_resolved_at_send_and_edit_and_listed(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, carol, dave = [await srv.user(n) for n in ("alice", "bob", "carol", "dave")]
        channel = await _group(srv, alice, "g", [bob, carol])
        async with http(srv, alice.token) as api:
            s1 = await _sent(api, channel, "m1", "hi @Bob, and @dave (not here), mail bob@example.org")
            s2 = await _sent(api, channel, "m2", "@channel standup!")
            s3 = await _sent(api, channel, "m3", "nobody")
            assert (await _message(api, channel, s1))["mentions"] == [bob.user_id]
            assert (await _message(api, channel, s2))["mentions"] == sorted([alice.user_id, bob.user_id, carol.user_id])
            r = await api.patch(f"/v1/channels/{channel}/messages/{s3}", {"text": "now @carol."})
            assert r.json()["mentions"] == [carol.user_id]
            r = await api.patch(f"/v1/channels/{channel}/messages/{s1}", {"text": "hi all"})
            assert r.json()["mentions"] == []
            edit_events = [e for e in await _events(api.as_user(carol.token)) if e["kind"] == "edit"]
            assert {e["seq"]: e["mentions"] for e in edit_events}[s3] == [carol.user_id]
            carols = (await api.as_user(carol.token).get("/v1/mentions")).json()["messages"]
            assert [m["seq"] for m in carols] == [s3, s2]  # newest mention first
            page = (await api.as_user(carol.token).get("/v1/mentions", before=carols[0]["mention_id"])).json()
            assert [m["seq"] for m in page["messages"]] == [s2]
            assert (await api.as_user(bob.token).get("/v1/mentions")).json()["messages"][0]["seq"] == s2
            assert (await api.as_user(dave.token).get("/v1/mentions")).json()["messages"] == []
            async with http(srv) as anon:
                _error(await anon.get("/v1/mentions"), 401, "unauthorized")
            # A member who left no longer reads the channel's mentions.
            assert (await api.as_user(carol.token).delete(f"/v1/channels/{channel}/members/{carol.user_id}")).status_code == 204
            assert (await api.as_user(carol.token).get("/v1/mentions")).json()["messages"] == []


async def test_channel_mention_only_in_small_channels(db_url: str) -> None:
    async with running_server(db_url, {"fanout": {"inbox_max_members": 2}}) as srv:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        small = await _group(srv, alice, "small", [bob])
        large = await _group(srv, alice, "large", [bob, carol])
        async with http(srv, alice.token) as api:
            s = await _sent(api, small, "s", "@channel hi")
            big = await _sent(api, large, "l", "@channel hi @carol")
            assert (await _message(api, small, s))["mentions"] == [alice.user_id, bob.user_id]
            assert (await _message(api, large, big))["mentions"] == [carol.user_id]


# --- search ----------------------------------------------------------------------------


async def test_search_only_returns_the_callers_channels(db_url: str) -> None:
    """Many users and channels; every user searches a word every channel holds."""
    async with running_server(db_url) as srv:
        users = [await srv.user(f"user{i}") for i in range(8)]
        channels: dict[int, set[int]] = {}  # channel -> member ids
        for c in range(12):
            owner = users[c % 8]
            members = [users[(c + k) % 8] for k in (1, 3)] if c % 3 else []
            cid = await _group(srv, owner, f"c{c}", members)
            channels[cid] = {owner.user_id} | {m.user_id for m in members}
            async with http(srv, owner.token) as api:
                await _sent(api, cid, f"k{c}", f"quarterly budget of channel {cid}")
                await _sent(api, cid, f"j{c}", "unrelated chatter")
        async with http(srv) as anon:
            _error(await anon.get("/v1/search", q="budget"), 401, "unauthorized")
            for user in users:
                api = anon.as_user(user.token)
                r = await api.get("/v1/search", q="budget", limit=200)
                assert r.status_code == 200, r.text
                got = {m["channel_id"] for m in r.json()["results"]}
                mine = {c for c, members in channels.items() if user.user_id in members}
                assert got == mine
                for other in set(channels) - mine:
                    # Naming a channel one cannot read finds nothing either.
                    assert (await api.get("/v1/search", q="budget", channel_id=other)).json()["results"] == []


async def test_search_syntax_highlight_order_paging_and_reindexing(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice, "g", [])
        async with http(srv, alice.token) as api:
            s1 = await _sent(api, channel, "1", "the release is on Friday")
            s2 = await _sent(api, channel, "2", "Friday release postponed")
            s3 = await _sent(api, channel, "3", "lunch on Friday?")
            await _sent(api, channel, "4", "nothing to see")

            async def seqs(**params: Any) -> list[int]:
                r = await api.get("/v1/search", **params)
                assert r.status_code == 200, r.text
                return [m["seq"] for m in r.json()["results"]]

            assert await seqs(q="friday") == [s3, s2, s1]  # newest first
            assert await seqs(q='"release is"') == [s1]  # a phrase
            assert await seqs(q="friday -lunch") == [s2, s1]  # exclusion
            assert await seqs(q="friday", channel_id=channel, before=s3) == [s2, s1]
            assert await seqs(q="friday", channel_id=channel, limit=1) == [s3]
            hit = (await api.get("/v1/search", q="postponed")).json()["results"][0]
            assert "<mark>postponed</mark>" in hit["highlight"] and hit["text"] == "Friday release postponed"
            # Edits re-index, deletions remove.
            assert (await api.patch(f"/v1/channels/{channel}/messages/{s3}", {"text": "dinner tonight"})).status_code == 200
            assert await seqs(q="lunch") == [] and await seqs(q="dinner") == [s3]
            assert (await api.delete(f"/v1/channels/{channel}/messages/{s2}")).status_code == 204
            assert await seqs(q="postponed") == [] and await seqs(q="friday") == [s1]
            for bad in ({"q": ""}, {"q": "   "}, {"q": "x" * 300}, {"q": "friday", "before": 3}):
                _error(await api.get("/v1/search", **bad), 400, "invalid")


# --- large channels --------------------------------------------------------------------


async def test_large_channel_changes_are_live_frames_not_inbox_events(db_url: str) -> None:
    async with running_server(db_url, {"fanout": {"inbox_max_members": 2}}) as srv:
        alice, bob, carol = [await srv.user(n) for n in ("alice", "bob", "carol")]
        channel = await _group(srv, alice, "big", [bob, carol])
        async with http(srv, alice.token) as api, ws_client(srv, bob.token) as ws:
            _, cursor = await ws.sync(0)
            seq = await _sent(api, channel, "m1", "draft")
            assert (await ws.recv_type("message"))["seq"] == seq
            assert (await api.patch(f"/v1/channels/{channel}/messages/{seq}", {"text": "final @bob"})).status_code == 200
            edit = await ws.recv_type("edit")
            assert edit == {"type": "edit", "channel_id": channel, "seq": seq, "text": "final @bob",
                            "edited_at": edit["edited_at"], "mentions": [bob.user_id]}
            assert (await api.put(f"/v1/channels/{channel}/messages/{seq}/reactions/{THUMBS}")).status_code == 204
            reaction = await ws.recv_type("reaction")
            assert reaction == {"type": "reaction", "channel_id": channel, "seq": seq, "user_id": alice.user_id,
                                "emoji": THUMBS, "change": "added"}
            assert (await api.delete(f"/v1/channels/{channel}/messages/{seq}/reactions/:x:")).status_code == 204
            assert (await api.delete(f"/v1/channels/{channel}/messages/{seq}")).status_code == 204
            delete = await ws.recv_type("delete")
            assert delete == {"type": "delete", "channel_id": channel, "seq": seq, "by": alice.user_id}
            # Nothing reached the inboxes; history has the current state.
            assert await _events(api.as_user(bob.token), cursor) == []
            assert (await _message(api, channel, seq))["deleted"] is True


# --- chatd verify ----------------------------------------------------------------------


async def test_verify_reports_broken_conversation_invariants(db_url: str, databases: Databases) -> None:
    databases.mark_broken(db_url)
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        channel = await _group(srv, alice, "g", [])
        async with http(srv, alice.token) as api:
            for i in range(1, 4):
                await _sent(api, channel, f"m{i}", f"text {i}")
            assert (await api.patch(f"/v1/channels/{channel}/messages/1", {"text": "edited"})).status_code == 200
            assert (await api.delete(f"/v1/channels/{channel}/messages/2")).status_code == 204
        assert await srv.stores.checks.verify() == []
        await _sql(srv, "INSERT INTO reactions (channel_id, seq, emoji, user_id) VALUES ($1, 2, ':x:', $2)",
                   channel, alice.user_id)
        await _sql(srv, "UPDATE messages SET text = 'tampered' WHERE channel_id = $1 AND seq = 1", channel)
        await _sql(srv, "UPDATE messages SET reply_to = 3 WHERE channel_id = $1 AND seq = 1", channel)
        await _sql(srv, "DELETE FROM messages WHERE channel_id = $1 AND seq = 3", channel)
        problems = "\n".join(await srv.stores.checks.verify())
        assert "deleted message still holds" in problems
        assert "the text not its last version" in problems
        assert "reply not attached" in problems
        assert "channel seq not contiguous" in problems


# --- the send frame's reply_to, and a mixed load ------------------------------------------


@pytest.mark.parametrize(("value", "ok"), [(1, True), (2**63 - 1, True), (None, True), (0, False), (-1, False),
                                           ("1", False), (True, False), (1.0, False), (2**63, False)])
def test_send_frame_reply_to_is_a_positive_id(value: Any, ok: bool) -> None:
    import json

    from chatd.wire.codec import FrameError, WireFormat, decode_client_frame
    from chatd.wire.frames import SendFrame

    frame = {"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "t", "reply_to": value}
    if ok:
        decoded = decode_client_frame(json.dumps(frame), WireFormat.JSON)
        assert isinstance(decoded, SendFrame) and decoded.reply_to == value
        assert decode_client_frame(json.dumps(decoded.to_dict()), WireFormat.JSON) == decoded
    else:
        with pytest.raises(FrameError) as caught:
            decode_client_frame(json.dumps(frame), WireFormat.JSON)
        assert caught.value.code == "invalid"


async def test_edits_deletes_reactions_and_replies_at_once_commit_without_deadlock(db_url: str) -> None:
    """Every kind of change on the same few messages at once, beside sends: all answered, verify clean."""
    async with running_server(db_url) as srv:
        users = [await srv.user(f"u{i}") for i in range(10)]
        channel = await _group(srv, users[0], "mix", users[1:])
        async with http(srv, users[0].token) as api:
            seqs = [await _sent(api.as_user(u.token), channel, f"root-{u.user_id}", f"root of @u{i}")
                    for i, u in enumerate(users)]
            statuses: list[int] = []

            async def member(i: int, user: ChatUser) -> None:
                me = api.as_user(user.token)
                own = seqs[i]
                for k in range(4):
                    target = seqs[(i + k) % len(seqs)]
                    calls = [
                        me.patch(f"/v1/channels/{channel}/messages/{own}", {"text": f"edit {k} @u{(i + 1) % 10}"}),
                        me.put(f"/v1/channels/{channel}/messages/{target}/reactions/:k{k}:"),
                        _send(me, channel, f"r-{user.user_id}-{k}", "reply", reply_to=target),
                        me.delete(f"/v1/channels/{channel}/messages/{target}/reactions/:k{k - 1}:"),
                    ]
                    for call in calls:
                        statuses.append((await call).status_code)
                statuses.append((await me.delete(f"/v1/channels/{channel}/messages/{own}")).status_code)

            with trio.fail_after(180):
                async with trio.open_nursery() as nursery:
                    for i, user in enumerate(users):
                        nursery.start_soon(member, i, user)
        # Each member deletes only its own root, and last, so every edit succeeds; the one allowed
        # refusal is a reaction on another member's root that member already deleted (404).
        assert set(statuses) <= {200, 201, 204, 404}, statuses
        assert statuses.count(200) == 40  # every edit
        assert await srv.stores.checks.verify() == []

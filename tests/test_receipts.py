"""Receipts (PROTOCOL §5) from outside: real server, real sockets, real PostgreSQL.

Watermark rules, enforced in SQL: forward-only, clamped to last_seq, read
implies delivered, a receipt that moves nothing writes nothing; many devices
at once; offline senders converge through their inbox; the large-channel
switch to live ``receipt_update``; who may post and read receipts.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from chatd.db.bridge import Connection
from tests.support import RunningServer, http, open_db, running_server, ws_client


async def _group(srv: RunningServer, token: str, members: list[int], name: str = "g") -> int:
    async with http(srv, token) as api:
        r = await api.post("/v1/channels", {"kind": "group", "name": name, "members": members})
        assert r.status_code == 201, r.text
        return int(r.json()["channel_id"])


async def _member_row(db_url: str, channel: int, user: int) -> Any:
    async with open_db(db_url) as db:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(
                "SELECT delivered_seq, read_seq, xmin::text::bigint AS xmin FROM members "
                "WHERE channel_id = $1 AND user_id = $2", channel, user)

        return await db.read(unit)


async def _inbox_count(db_url: str, user: int) -> int:
    async with open_db(db_url) as db:
        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM inbox WHERE user_id = $1", user))

        return await db.read(unit)


async def _settle(srv: RunningServer) -> None:
    """Wait until the receipt writer has nothing queued (WebSocket receipts are not answered)."""
    writer = srv.services.receipt_writer
    with trio.fail_after(20):
        while writer._queued:  # noqa: SLF001 - a test looks at the queue, read-only
            await trio.sleep(0.01)
        # The batch taken last may still be committing: one more round trip.
        await trio.sleep(0.2)


async def test_watermark_rules_forward_only_clamped_read_implies_delivered(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        channel = await _group(srv, alice.token, [bob.user_id])
        async with ws_client(srv, alice.token) as a:
            for i in range(5):
                assert (await a.send_message(channel, f"m{i}"))["type"] == "ack"
        async with http(srv, bob.token) as api:
            url = f"/v1/channels/{channel}/receipts"
            assert (await api.post(url, {"seq": 2, "state": "delivered"})).status_code == 204
            row = await _member_row(db_url, channel, bob.user_id)
            assert (row["delivered_seq"], row["read_seq"]) == (2, 0)
            # read implies delivered
            assert (await api.post(url, {"seq": 4, "state": "read"})).status_code == 204
            row = await _member_row(db_url, channel, bob.user_id)
            assert (row["delivered_seq"], row["read_seq"]) == (4, 4)
            # lower or equal: nothing changes and nothing is written (same row version, no event)
            events_before = await _inbox_count(db_url, alice.user_id)
            for body in ({"seq": 3, "state": "read"}, {"seq": 4, "state": "read"}, {"seq": 1, "state": "delivered"},
                         {"seq": 0, "state": "read"}):
                assert (await api.post(url, body)).status_code == 204
            again = await _member_row(db_url, channel, bob.user_id)
            assert again == row, "a receipt that moves nothing wrote the row"
            assert await _inbox_count(db_url, alice.user_id) == events_before
            # past last_seq: clamped to it
            assert (await api.post(url, {"seq": 10**12, "state": "read"})).status_code == 204
            row = await _member_row(db_url, channel, bob.user_id)
            assert (row["delivered_seq"], row["read_seq"]) == (5, 5)
            # the channel object's read_seq and unread are the caller's
            mine = (await api.get(f"/v1/channels/{channel}")).json()
            assert (mine["last_seq"], mine["read_seq"], mine["unread"]) == (5, 5, 0)
            listed = {c["channel_id"]: c for c in (await api.get("/v1/channels")).json()["channels"]}
            assert listed[channel]["unread"] == 0
            alices = (await api.as_user(alice.token).get(f"/v1/channels/{channel}")).json()
            assert (alices["read_seq"], alices["unread"]) == (0, 5)
            # the view: counts of members at or past seq, and every member's watermarks, from any member
            view = (await api.as_user(alice.token).get(url, seq=3)).json()
            assert view["seq"] == 3 and view["delivered"] == 1 and view["read"] == 1
            assert sorted(view["members"], key=lambda m: m["user_id"]) == [
                {"user_id": alice.user_id, "delivered_seq": 0, "read_seq": 0},
                {"user_id": bob.user_id, "delivered_seq": 5, "read_seq": 5},
            ]
            assert (await api.get(url, seq=0)).json()["delivered"] == 2


async def test_receipt_events_reach_every_member_and_an_offline_sender_converges(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
        channel = await _group(srv, alice.token, [bob.user_id, carol.user_id])
        async with ws_client(srv, alice.token) as a:
            await a.sync(0)
            for i in range(3):
                await a.send_message(channel, f"m{i}")
            _, cursor = await a.sync(0)  # alice's cursor before going offline
        # Alice is offline; bob and carol acknowledge over the WebSocket.
        async with ws_client(srv, bob.token) as b, ws_client(srv, carol.token) as c:
            await b.send({"type": "receipt", "channel_id": channel, "seq": 3, "state": "delivered"})
            await b.send({"type": "receipt", "channel_id": channel, "seq": 2, "state": "read"})
            await c.send({"type": "receipt", "channel_id": channel, "seq": 3, "state": "read"})
            await _settle(srv)
        # Alice's other device comes online later and syncs from her old cursor: the ticks converge.
        second = await srv.token(alice)
        async with ws_client(srv, second) as a2:
            events, _ = await a2.sync(cursor)
        receipts = [(e["user_id"], e["state"], e["seq"]) for e in events if e["kind"] == "receipt"]
        assert all(e["channel_id"] == channel for e in events if e["kind"] == "receipt")
        assert sorted(receipts) == sorted([(bob.user_id, "delivered", 3), (bob.user_id, "read", 2),
                                           (carol.user_id, "read", 3)])
        # Live, too: a connected member gets the event as it commits.
        async with ws_client(srv, alice.token) as a, ws_client(srv, bob.token) as b:
            _, head = await a.sync(0)
            await a.send_message(channel, "m3")
            await b.send({"type": "receipt", "channel_id": channel, "seq": 4, "state": "read"})
            with trio.fail_after(10):
                while True:
                    frame = await a.recv_type("event")
                    if frame["kind"] == "receipt":
                        break
            assert (frame["user_id"], frame["state"], frame["seq"]) == (bob.user_id, "read", 4)


async def test_concurrent_receipts_from_many_devices(db_url: str) -> None:
    async with running_server(db_url) as srv:
        owner = await srv.user("owner")
        users = [await srv.user(f"u{i}") for i in range(4)]
        channel = await _group(srv, owner.token, [u.user_id for u in users])
        async with ws_client(srv, owner.token) as o:
            for i in range(30):
                await o.send_message(channel, f"m{i}")
        rng = random.Random(9)
        sent: dict[tuple[int, str], int] = {}

        async def device(token: str, user_id: int, plan: list[tuple[str, int]], over_http: bool) -> None:
            if over_http:
                async with http(srv, token) as api:
                    for state, seq in plan:
                        r = await api.post(f"/v1/channels/{channel}/receipts", {"seq": seq, "state": state})
                        assert r.status_code == 204
                return
            async with ws_client(srv, token) as ws:
                for state, seq in plan:
                    await ws.send({"type": "receipt", "channel_id": channel, "seq": seq, "state": state})
                await ws.send({"type": "ping", "t": 1})
                assert (await ws.recv_type("pong"))["t"] == 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for user in users:
                    for d in range(3):  # three devices each, one of them over HTTP
                        token = user.token if d == 0 else await srv.token(user, f"dev{d}")
                        plan = [(rng.choice(("delivered", "read")), rng.randint(0, 35)) for _ in range(40)]
                        for state, seq in plan:
                            key = (user.user_id, state)
                            sent[key] = max(sent.get(key, 0), seq)
                        nursery.start_soon(device, token, user.user_id, plan, d == 2)
        await _settle(srv)
        for user in users:
            read = min(30, sent.get((user.user_id, "read"), 0))
            delivered = max(read, min(30, sent.get((user.user_id, "delivered"), 0)))
            row = await _member_row(db_url, channel, user.user_id)
            assert (row["delivered_seq"], row["read_seq"]) == (delivered, read)
        # Every member's inbox has each user's receipts strictly increasing per state, ending at the watermark.
        async with open_db(db_url) as db:
            async def unit(conn: Connection) -> list[Any]:
                return list(await conn.fetch(
                    "SELECT data FROM inbox WHERE user_id = $1 AND kind = 'receipt' ORDER BY inbox_seq",
                    owner.user_id))

            rows = await db.read(unit)
        for user in users:
            for state in ("delivered", "read"):
                seqs = [r["data"]["seq"] for r in rows if r["data"]["user_id"] == user.user_id
                        and r["data"]["state"] == state]
                assert seqs == sorted(set(seqs)), (state, seqs)
        assert srv.services.receipt_writer.batches < srv.services.receipt_writer.receipts


async def test_large_channel_receipts_are_live_receipt_updates(db_url: str) -> None:
    async with running_server(db_url, {"receipts": {"fanout_max_members": 2}}) as srv:
        alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
        dm = (await _dm(srv, alice.token, bob.user_id))
        group = await _group(srv, alice.token, [bob.user_id, carol.user_id])
        async with ws_client(srv, alice.token) as a, ws_client(srv, bob.token) as b:
            await a.sync(0)
            await a.send_message(group, "g1")
            await a.send_message(dm, "d1")
            _, head = await a.sync(0)
            # Three members > 2: live receipt_update, no inbox event.
            await b.send({"type": "receipt", "channel_id": group, "seq": 1, "state": "read"})
            update = await a.recv_type("receipt_update")
            assert update == {"type": "receipt_update", "channel_id": group, "user_id": bob.user_id,
                              "state": "read", "seq": 1}
            # Two members: an inbox event.
            await b.send({"type": "receipt", "channel_id": dm, "seq": 1, "state": "read"})
            event = await a.recv_type("event")
            assert event["kind"] == "receipt" and event["channel_id"] == dm
        async with ws_client(srv, alice.token) as a:
            events, _ = await a.sync(head)
            assert [(e["kind"], e["channel_id"]) for e in events] == [("receipt", dm)]
        async with http(srv, carol.token) as api:
            view = (await api.get(f"/v1/channels/{group}/receipts", seq=1)).json()
            assert (view["delivered"], view["read"]) == (1, 1)


async def _dm(srv: RunningServer, token: str, other: int) -> int:
    async with http(srv, token) as api:
        r = await api.post("/v1/channels", {"kind": "dm", "members": [other]})
        assert r.status_code in (200, 201), r.text
        return int(r.json()["channel_id"])


async def test_receipts_authz_and_validation(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, mallory = await srv.user("alice"), await srv.user("bob"), await srv.user("mallory")
        channel = await _group(srv, alice.token, [bob.user_id])
        async with ws_client(srv, alice.token) as a:
            await a.send_message(channel, "m1")
        url = f"/v1/channels/{channel}/receipts"
        async with http(srv) as anon:
            assert (await anon.get(url, seq=1)).status_code == 401
            assert (await anon.post(url, {"seq": 1, "state": "read"})).status_code == 401
            m = anon.as_user(mallory.token)
            for r in (await m.get(url, seq=1), await m.post(url, {"seq": 1, "state": "read"}),
                      await m.get("/v1/channels/999999/receipts", seq=1),
                      await m.post("/v1/channels/999999/receipts", {"seq": 1, "state": "read"})):
                assert r.status_code == 403 and r.json()["error"]["code"] == "not_member", r.text
            b = anon.as_user(bob.token)
            for body in ({"seq": 1, "state": "seen"}, {"seq": -1, "state": "read"}, {"seq": "1", "state": "read"},
                         {"state": "read"}, {"seq": True, "state": "read"}):
                r = await b.post(url, body)
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid", (body, r.text)
            assert (await b.get(url)).status_code == 400
            assert (await b.get(url, seq="x")).status_code == 400
        row = await _member_row(db_url, channel, mallory.user_id)
        assert row is None
        async with ws_client(srv, mallory.token) as ws:
            await ws.send({"type": "receipt", "channel_id": channel, "seq": 1, "state": "read", "ref": "r1"})
            error = await ws.recv_type("error")
            assert error["code"] == "not_member" and error["ref"] == "r1"
            await ws.send({"type": "receipt", "channel_id": channel, "seq": 1, "state": "seen"})
            assert (await ws.recv_type("error"))["code"] == "invalid"
        assert await _inbox_count(db_url, alice.user_id) == 2  # created + m1: nothing from mallory

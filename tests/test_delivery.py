"""Ordering, gaplessness and the sync invariant under concurrency.

- Three senders x 50 messages at once into two overlapping groups: no
  deadlock; seq is 1..n per channel and inbox_seq 1..n per user; every
  device of every member sees the same events in the same order.
- The invariant (Zulip's verify_action idea): a device that syncs from any
  cursor and then follows the live stream ends with exactly a fresh read.
"""

from __future__ import annotations

from typing import Any

import trio

from chatd.db.bridge import Connection
from tests.support import RunningServer, WsClient, http, running_server, ws_client

PER_SENDER = 50


async def _group(srv: RunningServer, token: str, name: str, members: list[int]) -> int:
    async with http(srv, token) as api:
        r = await api.post("/v1/channels", {"kind": "group", "name": name, "members": members})
        assert r.status_code == 201, r.text
        return int(r.json()["channel_id"])


async def _collect(client: WsClient, until_inbox_seq: int, out: list[dict[str, Any]]) -> None:
    """Follow sync + live until inbox_seq reaches ``until_inbox_seq``."""
    await client.send({"type": "sync", "after": 0})
    with trio.fail_after(60):
        while not out or out[-1]["inbox_seq"] < until_inbox_seq:
            frame = await client.recv(60)
            if frame["type"] == "event":
                out.append(frame)


async def _fresh_read(srv: RunningServer, user_id: int) -> list[dict[str, Any]]:
    events = await srv.stores.inbox.read(user_id, 0, 100000)
    return [e.to_frame() for e in events]


async def test_concurrent_senders_into_overlapping_groups(db_url: str) -> None:
    async with running_server(db_url) as srv:
        a = await srv.user("a")
        b = await srv.user("b")
        c = await srv.user("c")
        d = await srv.user("d")
        # Group 1: a, b, c. Group 2: b, c, d. Senders a, b, c: b and c write to both.
        g1 = await _group(srv, a.token, "one", [b.user_id, c.user_id])
        g2 = await _group(srv, d.token, "two", [b.user_id, c.user_id])
        plans = {a: [g1], b: [g1, g2], c: [g2, g1]}
        users = [a, b, c, d]
        second_devices = {u: await srv.token(u) for u in users}
        heads_before = {u: await srv.stores.inbox.head(u.user_id) for u in users}

        # Who receives how many: every message goes to all members of its group.
        expected_per_user = {u: 0 for u in users}
        counts = {g1: 0, g2: 0}
        for sender, groups in plans.items():
            for i in range(PER_SENDER):
                counts[groups[i % len(groups)]] += 1
        members = {g1: [a, b, c], g2: [b, c, d]}
        for g, n in counts.items():
            for u in members[g]:
                expected_per_user[u] += n
        final = {u: heads_before[u] + expected_per_user[u] for u in users}

        seen: dict[tuple[str, int], list[dict[str, Any]]] = {}
        acks: list[dict[str, Any]] = []

        async def watch(user: Any, token: str, device: int) -> None:
            out: list[dict[str, Any]] = []
            seen[(user.name, device)] = out
            async with ws_client(srv, token) as client:
                await _collect(client, final[user], out)

        async def send_all(user: Any, groups: list[int]) -> None:
            async with ws_client(srv, user.token) as client:
                for i in range(PER_SENDER):
                    # Pipelined: several sends in flight before their acks come back.
                    await client.send({"type": "send", "channel_id": groups[i % len(groups)],
                                       "client_msg_id": f"{user.name}-{i}", "text": f"{user.name} {i}", "ref": str(i)})
                got = 0
                while got < PER_SENDER:
                    frame = await client.recv(30)
                    if frame["type"] == "ack":
                        acks.append(frame)
                        got += 1
                    assert frame["type"] != "error", frame

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for u in users:
                    nursery.start_soon(watch, u, u.token, 1)
                    nursery.start_soon(watch, u, second_devices[u], 2)
                for sender, groups in plans.items():
                    nursery.start_soon(send_all, sender, groups)

        assert len(acks) == 3 * PER_SENDER and not any(a["duplicate"] for a in acks)
        for g in (g1, g2):
            seqs = sorted(a["seq"] for a in acks if a["channel_id"] == g)
            assert seqs == list(range(1, counts[g] + 1)), f"channel {g} seq not 1..n"
        # Each sender's messages keep the order it sent them in, per channel.
        for sender in plans:
            for g in (g1, g2):
                mine = [a for a in acks if a["client_msg_id"].startswith(sender.name + "-") and a["channel_id"] == g]
                by_index = sorted(mine, key=lambda a: int(a["client_msg_id"].split("-")[1]))
                assert [a["seq"] for a in by_index] == sorted(a["seq"] for a in mine)
        for u in users:
            fresh = await _fresh_read(srv, u.user_id)
            assert [e["inbox_seq"] for e in fresh] == list(range(1, final[u] + 1))
            for device in (1, 2):
                got = seen[(u.name, device)]
                assert got == fresh, f"{u.name} device {device} differs from a fresh read"
        assert await srv.stores.checks.verify() == []


async def test_sync_from_every_cursor_plus_live_equals_fresh_read(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        carol = await srv.user("carol")
        g = await _group(srv, alice.token, "g", [bob.user_id])
        async with ws_client(srv, alice.token) as a:
            for i in range(6):
                await a.send_message(g, f"h{i}")
        # Membership changes are events too.
        async with http(srv, alice.token) as api:
            assert (await api.post(f"/v1/channels/{g}/members", {"user_ids": [carol.user_id]})).status_code == 200
            assert (await api.patch(f"/v1/channels/{g}", {"name": "renamed"})).status_code == 200
            assert (await api.delete(f"/v1/channels/{g}/members/{carol.user_id}")).status_code == 204
        head = await srv.stores.inbox.head(bob.user_id)
        live_count = 5
        # Stale state at every cursor: sync from it, then receive live events.
        for cursor in range(0, head + 1):
            async with ws_client(srv, bob.token) as b:
                events, synced = await b.sync(cursor)
                assert synced == head
                assert [e["inbox_seq"] for e in events] == list(range(cursor + 1, head + 1))
                async with ws_client(srv, alice.token) as a:
                    for i in range(live_count):
                        await a.send_message(g, f"live-{cursor}-{i}")
                while len(events) < head - cursor + live_count:
                    events.append(await b.recv_type("event"))
                head += live_count
                fresh = await _fresh_read(srv, bob.user_id)
                assert events == fresh[cursor:], f"sync from {cursor} + live != fresh read"


async def test_lost_wakeup_costs_latency_not_events(db_url: str) -> None:
    """A write committed behind the node's back (no local wake-up) still arrives, via NOTIFY."""
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        g = await _group(srv, alice.token, "g", [bob.user_id])
        async with ws_client(srv, bob.token) as b:
            await b.sync(0)

            async def behind_the_back(conn: Connection) -> Any:
                return await conn.fetchrow("SELECT * FROM chatd_send($1, $2, 'sneaky', 'hello', 1000)",
                                           alice.user_id, g)

            await srv.stores.db.transaction(behind_the_back)
            event = await b.recv_type("event", timeout=10)
            assert event["client_msg_id"] == "sneaky"

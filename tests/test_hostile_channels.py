"""Hostile use of channel creation, renames and member changes (issue 7).

- Concurrency: many group creations by one user with overlapping members,
  DM creations, adds, removes and renames on overlapping channels, and sends
  into them, all at once over real HTTP against a real PostgreSQL. Every
  channel-changing transaction takes its locks in the send path's global
  order (channel row, then users' rows by id), so none deadlocks: no answer
  is a 500, and `chatd verify`'s invariants hold afterwards.
- Rate limits: channel operations and the users they put into channels are
  per-user token buckets; over them the answer is 429 `rate_limited` with
  `Retry-After`, and nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from chatd.config import Config
from chatd.db.stores import Stores
from chatd.models import SendRequest
from chatd.errors import NotMember
from tests.support import Api, ChatUser, RunningServer, admin_group, http, open_db, running_server
from tests.test_http import err, ok

#: High enough that the concurrency test never meets the channel-op limits.
UNLIMITED: dict[str, object] = {
    "channel_ops_per_min": 1_000_000,
    "channel_ops_burst": 1_000_000,
    "channel_invites_per_min": 1_000_000,
    "channel_invites_burst": 1_000_000,
}


async def _group(api: Api, name: str, members: list[int]) -> int:
    body = ok(await api.post("/v1/channels", {"kind": "group", "name": name, "members": members}), 201)
    return int(body["channel_id"])


async def _deadlocks(db_url: str) -> int:
    """PostgreSQL's count of deadlocks in this database. Read after the server
    stopped: a backend reports its counters when it exits. It catches deadlocks
    that an answer would hide (a refused batch of sends is retried one by one)."""
    async with open_db(db_url, max_size=1) as db:

        async def unit(conn: Any) -> int:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return int(await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))

        return await db.read(unit)


async def _inbox_heads(srv: RunningServer, users: list[ChatUser]) -> dict[int, int]:
    return {u.user_id: await srv.stores.inbox.head(u.user_id) for u in users}


# --- concurrency: the global lock order ----------------------------------------------------


async def test_concurrent_channel_changes_and_sends_never_deadlock(db_url: str) -> None:
    overrides: dict[str, dict[str, object]] = {"limits": UNLIMITED, "database": {"pool_max": 12}}
    async with running_server(db_url, overrides) as srv:
        users = [await srv.user(f"user{i}") for i in range(8)]
        owner = users[0]
        ids = [u.user_id for u in users]
        rng = random.Random(7)
        async with http(srv, owner.token) as api:
            # Three groups everyone is in; members of the rest come and go.
            groups = [await _group(api, f"g{i}", ids[1:]) for i in range(3)]
            answers: Counter[tuple[str, int]] = Counter()
            failures: list[str] = []

            async def call(kind: str, expected: set[int], request: Any) -> None:
                resp: httpx.Response = await request
                answers[(kind, resp.status_code)] += 1
                if resp.status_code not in expected:
                    failures.append(f"{kind}: {resp.status_code} {resp.text[:200]}")

            def as_user(user: ChatUser) -> Api:
                return api.as_user(user.token)

            async with trio.open_nursery() as nursery:
                # 16 group creations by one user, overlapping members.
                for i in range(16):
                    members = rng.sample(ids[1:], 5)
                    body = {"kind": "group", "name": f"new{i}", "members": members}
                    nursery.start_soon(call, "create", {201}, api.post("/v1/channels", body))
                # DMs among overlapping pairs, each opened from both sides at once.
                for i in range(8):
                    a, b = users[i % 4], users[4 + i % 4]
                    if i >= 4:
                        a, b = b, a
                    body = {"kind": "dm", "members": [b.user_id]}
                    nursery.start_soon(call, "dm", {200, 201}, as_user(a).post("/v1/channels", body))
                for round_ in range(4):
                    for cid in groups:
                        # Adds of users 6 and 7, removals of users 5 and 6: the same
                        # user may be added and removed at once (404: not a member).
                        body = {"user_ids": [ids[6], ids[7]]}
                        nursery.start_soon(call, "add", {200}, api.post(f"/v1/channels/{cid}/members", body))
                        nursery.start_soon(
                            call, "remove", {204, 404}, api.delete(f"/v1/channels/{cid}/members/{ids[5 + round_ % 2]}")
                        )
                        nursery.start_soon(
                            call, "rename", {200}, api.patch(f"/v1/channels/{cid}", {"name": f"r{round_}"})
                        )
                        for sender in users[1:5]:
                            body = {"client_msg_id": f"{cid}-{round_}-{sender.user_id}", "text": "x"}
                            nursery.start_soon(
                                call, "send", {201}, as_user(sender).post(f"/v1/channels/{cid}/messages", body)
                            )

        assert not failures, (failures[:5], answers)
        assert answers[("create", 201)] == 16
        assert answers[("send", 201)] == 4 * 3 * 4
        assert await srv.stores.checks.verify() == []
        # Every created group and every DM pair exists once.
        channels = await srv.stores.channels.summaries()
        assert sum(1 for c in channels if c.kind == "dm") == 4
        assert sum(1 for c in channels if c.kind == "group") == 3 + 16
    assert await _deadlocks(db_url) == 0


async def test_concurrent_group_creations_by_one_user(db_url: str) -> None:
    """The original finding: ten-plus concurrent creations with the same members."""
    overrides: dict[str, dict[str, object]] = {"limits": UNLIMITED, "database": {"pool_max": 12}}
    async with running_server(db_url, overrides) as srv:
        users = [await srv.user(f"u{i}") for i in range(6)]
        ids = [u.user_id for u in users]
        async with http(srv, users[0].token) as api:
            statuses: list[int] = []

            async def create(i: int) -> None:
                body = {"kind": "group", "name": f"same{i}", "members": ids[1:]}
                statuses.append((await api.post("/v1/channels", body)).status_code)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(create, i)
        assert statuses == [201] * 20
        heads = await _inbox_heads(srv, users)
        assert set(heads.values()) == {20}
        assert await srv.stores.checks.verify() == []
    assert await _deadlocks(db_url) == 0


# --- rate limits -----------------------------------------------------------------------------


def _limited(resp: httpx.Response) -> int:
    """A 429 `rate_limited` with the contract's body; returns Retry-After in seconds."""
    err(resp, 429, "rate_limited")
    retry_after = int(resp.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


async def test_channel_operations_are_rate_limited_per_user(db_url: str) -> None:
    # Three operations at once, then one every 20 s: nothing refills during the test.
    limits = {"channel_ops_per_min": 3, "channel_ops_burst": 3}
    async with running_server(db_url, {"limits": limits}) as srv, http(srv) as api:
        alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
        a, b = api.as_user(alice.token), api.as_user(bob.token)
        cid = await _group(a, "one", [bob.user_id])
        ok(await a.patch(f"/v1/channels/{cid}", {"name": "renamed"}))
        ok(await a.post(f"/v1/channels/{cid}/members", {"user_ids": [carol.user_id]}))
        heads = await _inbox_heads(srv, [alice, bob, carol])
        # Every kind of channel change now answers 429 with Retry-After, and writes nothing.
        refused = [
            await a.post("/v1/channels", {"kind": "group", "name": "two", "members": [bob.user_id]}),
            await a.post("/v1/channels", {"kind": "dm", "members": [carol.user_id]}),
            await a.patch(f"/v1/channels/{cid}", {"name": "again"}),
            await a.post(f"/v1/channels/{cid}/members", {"user_ids": [carol.user_id]}),
            await a.delete(f"/v1/channels/{cid}/members/{carol.user_id}"),
        ]
        for resp in refused:
            assert 1 <= _limited(resp) <= 20
        assert await _inbox_heads(srv, [alice, bob, carol]) == heads
        assert [c.channel_id for c in await srv.stores.channels.summaries()] == [cid]
        assert ok(await a.get(f"/v1/channels/{cid}"))["name"] == "renamed"
        # Reads are not limited; another user has a bucket of its own.
        ok(await a.get("/v1/channels"))
        ok(await b.patch(f"/v1/channels/{cid}", {"name": "bob's"}))
        dm = ok(await b.post("/v1/channels", {"kind": "dm", "members": [carol.user_id]}), 201)
        # Opening an existing DM writes nothing and costs nothing: bob can still do it
        # any number of times, and one more real change after.
        for _ in range(5):
            assert ok(await b.post("/v1/channels", {"kind": "dm", "members": [carol.user_id]}))["channel_id"] == dm["channel_id"]
        assert (await b.delete(f"/v1/channels/{cid}/members/{bob.user_id}")).status_code == 204
        _limited(await b.patch(f"/v1/channels/{dm['channel_id']}", {"name": "x"}))
        assert await srv.stores.checks.verify() == []


async def test_users_put_into_channels_weigh_on_their_own_limit(db_url: str) -> None:
    """100 group creations in a second used to put a victim into 100 channels."""
    limits = {
        "channel_ops_per_min": 1000,
        "channel_ops_burst": 1000,
        "channel_invites_per_min": 1,
        "channel_invites_burst": 6,
    }
    async with running_server(db_url, {"limits": limits}) as srv, http(srv) as api:
        spammer = await srv.user("spammer")
        victims = [await srv.user(f"victim{i}") for i in range(8)]
        s = api.as_user(spammer.token)
        ids = [v.user_id for v in victims]
        # Four others, then two: six of the bucket's six.
        await _group(s, "first", ids[:4])
        await _group(s, "second", ids[4:6])
        answers = [
            (await s.post("/v1/channels", {"kind": "group", "name": f"spam{i}", "members": ids[:1]}))
            for i in range(20)
        ]
        for resp in answers:
            assert _limited(resp) >= 1
        # The victim is in the channels it was put into before the limit, no more.
        assert len(ok(await api.as_user(victims[0].token).get("/v1/channels"))["channels"]) == 1
        # Adding members and opening DMs count too; a group of only oneself costs no invitation.
        cid = await _group(s, "alone", [])
        _limited(await s.post(f"/v1/channels/{cid}/members", {"user_ids": [ids[7]]}))
        _limited(await s.post("/v1/channels", {"kind": "dm", "members": [ids[7]]}))
        # Nothing was written for the refused requests.
        assert await srv.stores.inbox.head(ids[7]) == 0
        assert len(await srv.stores.channels.summaries()) == 3


async def test_a_group_larger_than_the_burst_needs_a_full_bucket(db_url: str) -> None:
    limits = {"channel_invites_per_min": 1, "channel_invites_burst": 3}
    async with running_server(db_url, {"limits": limits}) as srv, http(srv) as api:
        owner = await srv.user("owner")
        others = [await srv.user(f"member{i}") for i in range(6)]
        o = api.as_user(owner.token)
        # Larger than the bucket: allowed once, on a full bucket, and it empties it.
        cid = await _group(o, "big", [m.user_id for m in others])
        assert ok(await o.get(f"/v1/channels/{cid}"))["member_count"] == 7
        retry_after = _limited(await o.post("/v1/channels", {"kind": "group", "name": "b", "members": [others[0].user_id]}))
        assert 50 <= retry_after <= 61  # one invitation a minute


async def _raw_exchange(stream: trio.SocketStream, buffer: bytearray, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a kept-alive raw connection: (status, headers, body)."""
    await stream.send_all(request)
    with trio.fail_after(30):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the connection"
            rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


async def test_rename_flood_on_a_raw_socket_is_cut_at_the_default_limits(db_url: str) -> None:
    """300 renames of a 16-member group used to write 4,800 inbox events in 1.8 s."""
    defaults = Config.defaults().limits
    limits = {"channel_ops_per_min": defaults.channel_ops_per_min, "channel_ops_burst": defaults.channel_ops_burst}
    async with running_server(db_url, {"limits": limits}) as srv:
        users = [await srv.user(f"m{i}") for i in range(16)]
        ids = [u.user_id for u in users]
        channel = await admin_group(srv.stores, ids[0], "flood", ids, 100)  # the admin path: no token
        cid = channel.channel_id
        heads = await _inbox_heads(srv, users)
        url = urlsplit(srv.url)
        assert url.hostname and url.port
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        buffer = bytearray()
        statuses: Counter[int] = Counter()
        start = trio.current_time()
        async with stream:
            for i in range(300):
                body = json.dumps({"name": f"flood {i}"}).encode()
                request = (
                    f"PATCH /v1/channels/{cid} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Authorization: Bearer {users[0].token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                status, headers, payload = await _raw_exchange(stream, buffer, request)
                statuses[status] += 1
                if status == 429:
                    assert int(headers["retry-after"]) >= 1
                    assert headers["content-type"].startswith("application/json")
                    assert json.loads(payload)["error"]["code"] == "rate_limited"
                else:
                    assert status == 200, (status, payload[:200])
        elapsed = trio.current_time() - start
        assert set(statuses) == {200, 429}
        allowed = defaults.channel_ops_burst + elapsed * defaults.channel_ops_per_min / 60 + 1
        assert statuses[200] <= allowed, (statuses, elapsed)
        # Each accepted rename is one event per member, and only those were written.
        after = await _inbox_heads(srv, users)
        assert all(after[u] - heads[u] == statuses[200] for u in ids)
        assert await srv.stores.checks.verify() == []


# --- a send racing the removal of its sender ------------------------------------------------

_WAITERS = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
_CHANNEL_ROW_LOCKED = """
SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE c.relname = 'channels' AND l.mode = 'RowShareLock' AND l.granted AND l.pid <> pg_backend_pid()
"""


async def _send_during_removal(db_url: str, batch: bool) -> None:
    """Bob sends while a removal of bob holds the channel row (as remove_member
    does): the send passes the first membership check, waits for the row, and
    must then be refused, with nothing stored, once the removal commits."""
    async with open_db(db_url, max_size=4) as db:
        stores = Stores.over(db)
        alice = await stores.users.create("alice", "Alice", None, False)
        bob = await stores.users.create("bob", "Bob", None, False)
        channel = await admin_group(stores, alice.user_id, "race", [bob.user_id], 10)
        cid = channel.channel_id

        async def removal(conn: Any) -> int:
            await conn.execute("SELECT 1 FROM channels WHERE id = $1 FOR UPDATE", cid)
            await conn.execute("DELETE FROM members WHERE channel_id = $1 AND user_id = $2", cid, bob.user_id)
            await conn.execute("UPDATE channels SET member_count = member_count - 1 WHERE id = $1", cid)
            async with asyncio.timeout(20):  # until the send waits for the channel row
                while not await conn.fetchval(_WAITERS):
                    await asyncio.sleep(0.01)
            return 0

        outcome: list[object] = []

        async def row_locked(conn: Any) -> int:
            return int(await conn.fetchval(_CHANNEL_ROW_LOCKED))

        async def send() -> None:
            with trio.fail_after(20):  # until the removal holds the channel row
                while not await db.read(row_locked):
                    await trio.sleep(0.01)
            if batch:
                outcome.extend(await stores.messages.send_batch([SendRequest(bob.user_id, cid, "racing", "hi")], 1000))
            else:
                try:
                    outcome.append(await stores.messages.send(SendRequest(bob.user_id, cid, "racing", "hi"), 1000))
                except NotMember as exc:
                    outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.transaction, removal)
            nursery.start_soon(send)
        assert len(outcome) == 1 and isinstance(outcome[0], NotMember), outcome
        assert (await stores.channels.get(cid, alice.user_id)).last_seq == 0
        assert await stores.inbox.head(alice.user_id) == 1  # "created" only
        assert await stores.checks.verify() == []


async def test_a_send_racing_its_senders_removal_is_refused(db_url: str) -> None:
    await _send_during_removal(db_url, batch=False)


async def test_a_batched_send_racing_its_senders_removal_is_refused(db_url: str) -> None:
    await _send_during_removal(db_url, batch=True)

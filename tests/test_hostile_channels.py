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

import random
from collections import Counter
from typing import Any

import httpx
import trio

from tests.support import Api, ChatUser, RunningServer, http, running_server
from tests.test_http import err, ok

#: High enough that the concurrency test never meets the channel-op limits.
UNLIMITED = {
    "channel_ops_per_min": 1_000_000,
    "channel_ops_burst": 1_000_000,
    "channel_invites_per_min": 1_000_000,
    "channel_invites_burst": 1_000_000,
}


async def _group(api: Api, name: str, members: list[int]) -> int:
    body = ok(await api.post("/v1/channels", {"kind": "group", "name": name, "members": members}), 201)
    return int(body["channel_id"])


async def _inbox_heads(srv: RunningServer, users: list[ChatUser]) -> dict[int, int]:
    return {u.user_id: await srv.store.inbox_head(u.user_id) for u in users}


# --- concurrency: the global lock order ----------------------------------------------------


async def test_concurrent_channel_changes_and_sends_never_deadlock(db_url: str) -> None:
    overrides: dict[str, dict[str, object]] = {"database": {"pool_max": 12}}
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
                # DMs among overlapping pairs, some of them twice.
                for i in range(8):
                    a, b = users[i % 4], users[4 + i % 4]
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
        assert await srv.store.verify() == []
        # Every created group and every DM pair exists once.
        channels = await srv.store.all_channels()
        assert sum(1 for c in channels if c["kind"] == "dm") == 4
        assert sum(1 for c in channels if c["kind"] == "group") == 3 + 16


async def test_concurrent_group_creations_by_one_user(db_url: str) -> None:
    """The original finding: ten-plus concurrent creations with the same members."""
    overrides: dict[str, dict[str, object]] = {"database": {"pool_max": 12}}
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
        assert await srv.store.verify() == []

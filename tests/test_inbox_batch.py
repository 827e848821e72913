"""Batched inbox reads (InboxStore.read_many, InboxService's readers) answer for each reader what it alone
would read: its own page, and each message as its history shows it to that reader (``me`` included)."""

from __future__ import annotations

import trio

from chatd.db.bridge import Connection
from chatd.db.stores import Stores
from chatd.hub import Hub
from chatd.models import SendRequest
from chatd.services.inbox import InboxService
from tests.support import admin_group, open_db


async def test_read_many_is_read_for_each_request(db_url: str) -> None:
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        ids = [(await stores.users.create(n, n, None, False)).user_id for n in ("ann", "ben", "cal", "dan")]
        group = await admin_group(stores, ids[0], "g", ids[:3])
        for i in range(7):
            await stores.messages.send(SendRequest(ids[i % 3], group.channel_id, f"m{i}", f"text {i}"),
                                       inbox_max_members=100)
        requests = [(ids[0], 0, 100), (ids[1], 3, 2), (ids[2], 5, 100), (ids[3], 0, 100), (ids[1], 0, 100)]
        many = await stores.inbox.read_many(requests)
        single = [await stores.inbox.read(u, after, limit) for u, after, limit in requests]
        assert many == single

        # Reactions: each reader's ``me`` is its own, in a batched page as in a single read.
        async def react(conn: Connection) -> None:
            await conn.execute("INSERT INTO reactions (channel_id, seq, emoji, user_id) VALUES "
                               "($1, 2, ':+1:', $2), ($1, 2, ':+1:', $3), ($1, 3, ':tada:', $3)",
                               group.channel_id, ids[1], ids[2])

        await db.transaction(react)
        reacted_many = await stores.inbox.read_many(requests)
        reacted_single = [await stores.inbox.read(u, after, limit) for u, after, limit in requests]
        assert reacted_many == reacted_single
        seq2 = {u: [e for e in events if e.kind == "message" and e.fields["seq"] == 2]
                for (u, _, _), events in zip(requests, reacted_many)}
        # Against an independent rendering: the channel's history as each member reads it.
        for (user_id, after, _), events in zip(requests, reacted_many):
            if user_id == ids[3]:
                continue  # not a member: no events, no history
            history = await stores.messages.history(group.channel_id, user_id, before=None, after=0, limit=100)
            shown = {m.seq: m.to_json() for m in history}
            for event in events:
                if event.kind == "message":
                    assert event.fields == shown[event.fields["seq"]], (user_id, event)
        assert seq2[ids[0]][0].fields["reactions"] == [{"emoji": ":+1:", "count": 2, "me": False}]
        assert seq2[ids[1]][0].fields["reactions"] == [{"emoji": ":+1:", "count": 2, "me": True}]
        assert [len(events) for events in many] == [8, 2, 3, 0, 8]  # "channel created" + 7 messages
        # Everyone's copy of a message is one fields dict, encoded once for all of them.
        first = [e for e in many[0] if e.kind == "message"][0]
        same = [e for e in many[4] if e.kind == "message"][0]
        assert first.fields is same.fields and first.shared


async def test_service_batches_concurrent_reads_and_answers_each(db_url: str) -> None:
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        ids = [(await stores.users.create(f"u{i}", f"u{i}", None, False)).user_id for i in range(30)]
        group = await admin_group(stores, ids[0], "g", ids)
        for i in range(5):
            await stores.messages.send(SendRequest(ids[0], group.channel_id, f"m{i}", "hi"), inbox_max_members=100)
        service = InboxService(stores.inbox, Hub(), readers=2)
        calls: list[int] = []
        real = stores.inbox.read_many

        async def counting(requests: list[tuple[int, int, int]]):  # type: ignore[no-untyped-def]
            calls.append(len(requests))
            return await real(requests)

        stores.inbox.read_many = counting  # type: ignore[method-assign]
        results: dict[int, list[int]] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)

            async def one(user_id: int, after: int) -> None:
                results[user_id] = [e.inbox_seq for e in await service.read(user_id, after)]

            async with trio.open_nursery() as readers:
                for n, user_id in enumerate(ids):
                    readers.start_soon(one, user_id, n % 4)
            nursery.cancel_scope.cancel()
        for n, user_id in enumerate(ids):
            assert results[user_id] == list(range(n % 4 + 1, 7)), user_id
        # 30 concurrent reads, answered by fewer statements than readers' turns would need one by one.
        assert sum(calls) == 30 and len(calls) < 30

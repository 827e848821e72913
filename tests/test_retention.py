"""Retention (retention.days) and the system channel's pruning, on a real server and PostgreSQL.

Messages are made old by backdating ``created_at`` with SQL; a pass is run with
the node's own job (``services.retention.run_pass``), the one its background
task runs once a minute.
"""

from __future__ import annotations

import trio

from chatd.db.retention import RetentionStore
from chatd.models import SendRequest
from chatd.services.retention import RetentionJob
from tests.conftest import Databases
from tests.support import Api, ChatUser, RunningServer, http, running_server
from tests.test_conversation import THUMBS, _group, _history, _sent, _sql
from tests.test_media import upload

OLD = "UPDATE messages SET created_at = now() - interval '10 days' WHERE channel_id = $1 AND seq <= $2"


async def _setup(srv: RunningServer) -> tuple[ChatUser, ChatUser, int]:
    alice, bob = await srv.user("alice"), await srv.user("bob")
    return alice, bob, await _group(srv, alice, "g", [bob])


async def _send_many(api: Api, channel: int, n: int, prefix: str = "m") -> None:
    for i in range(n):
        await _sent(api, channel, f"{prefix}{i}", f"message {i} @bob")


async def test_old_messages_become_tombstones_in_batches_newer_untouched(db_url: str) -> None:
    async with running_server(db_url, {"retention": {"days": 7}}) as srv:
        alice, bob, channel = await _setup(srv)
        async with http(srv, alice.token) as api:
            picture = await upload(srv, alice.token, b"\x89PNG" + bytes(range(200)), "application/octet-stream")
            assert picture.status_code == 201, picture.text
            media_id = picture.json()["media_id"]
            with_media = await _sent(api, channel, "pic", "look", media_ids=[media_id])
            await api.patch(f"/v1/channels/{channel}/messages/{with_media}", {"text": "look again"})
            await api.as_user(bob.token).put(f"/v1/channels/{channel}/messages/{with_media}/reactions/{THUMBS}")
            await _send_many(api, channel, 11)  # seqs 2..12
            await _sql(srv, OLD, channel, 9)  # 1..9 are 10 days old; 10..12 are new
            events_before = (await api.as_user(bob.token).get("/v1/sync", after=0, limit=1000)).json()["events"]
            # Batches of 4: the pass needs three transactions for this channel.
            job = RetentionJob(RetentionStore(srv.stores.db, batch=4), days=7)
            removed = await job.run_pass()
            history = {m["seq"]: m for m in await _history(api, channel, limit=100)}
            events_after = (await api.as_user(bob.token).get("/v1/sync", after=0, limit=1000)).json()["events"]
        assert removed == 9
        assert sorted(history) == list(range(1, 13))  # seqs kept
        for seq in range(1, 10):
            m = history[seq]
            assert m["deleted"] is True and m["text"] == "" and m["media"] == [] and m["reactions"] == [], m
            assert m["mentions"] == []
        for seq in (10, 11, 12):
            assert history[seq]["deleted"] is False and history[seq]["text"].startswith("message"), history[seq]
        rows = await _sql(srv, "SELECT seq, deleted_by FROM messages WHERE channel_id = $1 AND deleted_at IS NOT NULL",
                          channel)
        assert sorted(r["seq"] for r in rows) == list(range(1, 10)) and {r["deleted_by"] for r in rows} == {None}
        for table in ("message_edits", "reactions", "mentions", "message_media"):
            left = await _sql(srv, f"SELECT max(seq) AS s, count(*) AS n FROM {table} WHERE channel_id = $1", channel)
            assert left[0]["s"] is None or left[0]["s"] >= 10, (table, left)
        # The upload no message carries any more is unposted: media gc may free it.
        assert (await _sql(srv, "SELECT posted_at FROM media WHERE id = $1", media_id))[0]["posted_at"] is None
        # No inbox event per retained message.
        assert len(events_after) == len(events_before)
        assert [r["seq"] for r in await _sql(srv, "SELECT seq FROM retention_cursor WHERE channel_id = $1", channel)] == [9]
        assert await srv.stores.checks.verify() == []
        # A second pass finds nothing to do.
        assert await job.run_pass() == 0


async def test_an_upload_another_message_still_carries_stays_posted(db_url: str) -> None:
    async with running_server(db_url, {"retention": {"days": 1}}) as srv:
        alice, _, channel = await _setup(srv)
        async with http(srv, alice.token) as api:
            media_id = (await upload(srv, alice.token, b"abc" * 100, "application/octet-stream")).json()["media_id"]
            await _sent(api, channel, "a", "first", media_ids=[media_id])
            await _sent(api, channel, "b", "second", media_ids=[media_id])
            await _sql(srv, OLD, channel, 1)
            assert await srv.services.retention.run_pass() == 1
        assert (await _sql(srv, "SELECT posted_at FROM media WHERE id = $1", media_id))[0]["posted_at"] is not None
        assert await srv.stores.checks.verify() == []


async def test_days_zero_keeps_everything(db_url: str) -> None:
    async with running_server(db_url) as srv:
        assert srv.server.config.retention.days == 0
        alice, _, channel = await _setup(srv)
        async with http(srv, alice.token) as api:
            await _send_many(api, channel, 5)
            await _sql(srv, OLD, channel, 5)
            assert await srv.services.retention.run_pass() == 0
            history = await _history(api, channel)
        assert [m["deleted"] for m in history] == [False] * 5
        assert all(m["text"].startswith("message") for m in history)


async def test_two_nodes_running_the_job_at_once_do_not_conflict(db_url: str) -> None:
    async with running_server(db_url, {"retention": {"days": 3}}) as a, \
            running_server(db_url, {"retention": {"days": 3}}, node_name="node-b") as b:
        alice, _, first = await _setup(a)
        async with http(a, alice.token) as api:
            channels = [first]
            for i in range(3):
                r = await api.post("/v1/channels", {"kind": "group", "name": f"c{i}", "members": []})
                assert r.status_code == 201, r.text
                channels.append(int(r.json()["channel_id"]))
            for channel in channels:
                await _send_many(api, channel, 30, prefix=f"c{channel}-")
                await _sql(a, OLD, channel, 25)
        jobs = [RetentionJob(RetentionStore(node.stores.db, batch=5), days=3) for node in (a, b, a, b)]
        removed: list[int] = []

        async def one(job: RetentionJob) -> None:
            removed.append(await job.run_pass())

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
        assert sum(removed) == 4 * 25  # each message tombstoned once, by one node
        counts = await _sql(a, "SELECT channel_id, count(*) FILTER (WHERE deleted_at IS NOT NULL) AS dead, "
                               "count(*) AS n FROM messages WHERE channel_id = ANY($1) GROUP BY channel_id",
                            channels)
        assert {r["channel_id"]: (r["dead"], r["n"]) for r in counts} == {c: (25, 30) for c in channels}
        assert await a.stores.checks.verify() == []


async def test_system_channel_probe_messages_are_pruned_even_with_days_zero(db_url: str) -> None:
    async with running_server(db_url) as srv:
        # Stand-in for hours of probing: 40 more echo messages from the system user (the probe's own path).
        for i in range(40):
            await srv.services.writer.submit(SendRequest(0, 0, f"echo:test:{i}", "echo"))
        last_seq = (await _sql(srv, "SELECT last_seq FROM channels WHERE id = 0"))[0]["last_seq"]
        assert last_seq > 40
        await _sql(srv, "UPDATE messages SET created_at = now() - interval '2 hours' WHERE channel_id = 0 AND seq <= $1",
                   last_seq)
        job = RetentionJob(RetentionStore(srv.stores.db, batch=7), days=0)
        removed = await job.run_pass()
        left = await _sql(srv, "SELECT seq, created_at > now() - interval '1 hour' AS young FROM messages "
                               "WHERE channel_id = 0 ORDER BY seq")
        inbox = await _sql(srv, "SELECT inbox_seq, seq FROM inbox WHERE user_id = 0 ORDER BY inbox_seq")
        # Every old probe message went but the newest one (kept even when old); the rest are young.
        assert removed >= last_seq - 1 and left and left[0]["seq"] == removed + 1
        assert all(r["young"] for r in left[1:])
        assert len(inbox) == len(left) and [r["seq"] for r in inbox] == [r["seq"] for r in left]
        assert await srv.stores.checks.verify() == []
        # The probe keeps working on the pruned channel, and verify still holds after its next sends.
        await srv.services.writer.submit(SendRequest(0, 0, "echo:test:after", "echo"))
        assert await srv.stores.checks.verify() == []
        # Now the old message kept as the newest goes too; young probe messages stay.
        assert await job.run_pass() == (1 if not left[0]["young"] else 0)
        assert await job.run_pass() == 0
        assert await srv.stores.checks.verify() == []


async def test_verify_still_catches_a_gap_in_a_user_channel(databases: Databases) -> None:
    db_url = databases.fresh()
    databases.mark_broken(db_url)  # on purpose: the suite's final verify leaves it out
    async with running_server(db_url) as srv:
        alice, _, channel = await _setup(srv)
        async with http(srv, alice.token) as api:
            await _send_many(api, channel, 3)
        await _sql(srv, "DELETE FROM inbox WHERE channel_id = $1 AND seq = 1", channel)
        await _sql(srv, "DELETE FROM messages WHERE channel_id = $1 AND seq = 1", channel)
        problems = await srv.stores.checks.verify()
        assert any(p.startswith("channel seq not contiguous") for p in problems), problems
        assert any(p.startswith("user inbox_seq not contiguous") for p in problems), problems



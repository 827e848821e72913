"""``/metrics``, the echo probe and ``/readyz``'s report of it (PROTOCOL §2), against a real server.

The scrape is parsed with ``prometheus_client.parser``; each metric is checked
to move when what it counts happens. The counts are per process (chatd.metrics),
so tests compare before and after rather than absolute values.
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from chatd.db.bridge import Connection
from chatd.hub import Hub
from chatd.services.echo import SYSTEM_CHANNEL, SYSTEM_USER
from tests.support import RunningServer, admin_group, http, running_server, ws_client

#: Every metric PROTOCOL §2 names, as the parser reports the family (counters without ``_total``).
CONTRACT_METRICS = {
    "chatd_connections": "gauge",
    "chatd_frames": "counter",
    "chatd_sends": "counter",
    "chatd_send_ack_seconds": "histogram",
    "chatd_echo_roundtrip_seconds": "histogram",
    "chatd_commit_batch_size": "histogram",
    "chatd_inbox_backlog_seconds": "gauge",
    "chatd_notify_lag_seconds": "gauge",
    "chatd_db_pool_in_use": "gauge",
    "chatd_push_queue_depth": "gauge",
    "chatd_push_oldest_seconds": "gauge",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(srv: RunningServer) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, sorted labels) -> value)."""
    async with http(srv) as api:
        answer = await api.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for_echo_rounds(srv: RunningServer, more_than: float, timeout: float = 30) -> Samples:
    with trio.fail_after(timeout):
        while True:
            _, samples = await scrape(srv)
            if value(samples, "chatd_echo_roundtrip_seconds_count") > more_than:
                return samples
            await trio.sleep(0.2)


async def test_every_contract_metric_is_exposed_with_its_type(db_url: str) -> None:
    async with running_server(db_url) as srv:
        types, samples = await scrape(srv)
    for name, kind in CONTRACT_METRICS.items():
        assert types.get(name) == kind, (name, types.get(name))
    # Sparse labels: no user, channel or device label anywhere.
    for (_name, labels) in samples:
        assert not {k for k, _ in labels} & {"user_id", "channel_id", "device_id", "user", "channel"}
    assert value(samples, "chatd_push_queue_depth") == 0  # nobody has a push subscription


async def test_metrics_move_with_traffic(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob")
        channel = await admin_group(srv.stores, alice.user_id, "general", [alice.user_id, bob.user_id])
        _, before = await scrape(srv)
        async with ws_client(srv, alice.token) as a, ws_client(srv, bob.token, fmt="msgpack") as b:
            await b.sync(0)
            await a.sync(0)
            ack = await a.send_message(channel.channel_id, "m1", "hello")
            assert ack["type"] == "ack"
            again = await a.send_message(channel.channel_id, "m1", "hello")
            assert again["duplicate"] is True
            refused = await a.send_message(999999, "m2", "nope")
            assert refused["type"] == "error"
            await a.send_raw("not json")
            await a.recv_type("error")
            await b.recv_type("event")
            _, during = await scrape(srv)
        with trio.fail_after(10):  # the sessions end just after the clients close
            while True:
                _, after = await scrape(srv)
                if value(after, "chatd_connections", format="json") == value(before, "chatd_connections", format="json"):
                    break
                await trio.sleep(0.05)

    def moved(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert moved("chatd_connections", format="json") == 1
    assert moved("chatd_connections", format="msgpack") == 1
    assert value(after, "chatd_connections", format="msgpack") == value(before, "chatd_connections", format="msgpack")
    assert moved("chatd_frames_total", direction="in", type="send") == 3
    assert moved("chatd_frames_total", direction="in", type="sync") == 2
    assert moved("chatd_frames_total", direction="in", type="invalid") == 1
    assert moved("chatd_frames_total", direction="out", type="ack") == 2
    assert moved("chatd_frames_total", direction="out", type="welcome") == 2
    assert moved("chatd_frames_total", direction="out", type="event") >= 2  # alice's and bob's
    assert moved("chatd_frames_total", direction="out", type="error") == 2
    assert moved("chatd_sends_total", outcome="sent") == 1
    assert moved("chatd_sends_total", outcome="duplicate") == 1
    assert moved("chatd_sends_total", outcome="not_member") == 1
    assert moved("chatd_send_ack_seconds_count") == 2  # answered sends: sent and duplicate
    assert moved("chatd_send_ack_seconds_sum") > 0
    assert moved("chatd_commit_batch_size_count") >= 2  # the send and its retry (plus echo rounds)
    assert value(during, "chatd_db_pool_in_use") >= 0


async def test_echo_probe_runs_with_no_client_traffic(db_url: str) -> None:
    async with running_server(db_url) as srv:
        samples = await wait_for_echo_rounds(srv, 0)
        assert value(samples, "chatd_echo_roundtrip_seconds_sum") > 0
        assert value(samples, "chatd_notify_lag_seconds") > 0
        assert value(samples, "chatd_database_up") == 1
        assert value(samples, "chatd_registry_registered") == 1
        assert value(samples, "chatd_registry_alive_nodes") >= 1
        async with http(srv) as api:
            ready = await api.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready" and body["echo"]["ok"] is True, body
        assert body["echo"]["last_roundtrip_s"] > 0

        async def echo_row(conn: Connection) -> Any:
            return await conn.fetchrow("SELECT roundtrip_s, error FROM node_echo WHERE node = $1", "test-node")

        row = await srv.server.db.read(echo_row)  # type: ignore[union-attr]
        assert row is not None and row["roundtrip_s"] > 0 and row["error"] is None


async def test_failing_echo_probe_is_reported_while_readyz_stays_200(db_url: str, databases: Any) -> None:
    async with running_server(db_url) as srv:
        await wait_for_echo_rounds(srv, 0)
        db = srv.server.db
        assert db is not None

        async def leave(conn: Connection) -> None:  # the probe's sends are now refused
            await conn.execute("DELETE FROM members WHERE channel_id = $1 AND user_id = $2", SYSTEM_CHANNEL, SYSTEM_USER)

        async def rejoin(conn: Connection) -> None:
            await conn.execute("INSERT INTO members (channel_id, user_id) VALUES ($1, $2)", SYSTEM_CHANNEL, SYSTEM_USER)

        await db.transaction(leave)
        try:
            srv.services.echo.interval_s = 0.1
            with trio.fail_after(30):
                while True:
                    async with http(srv) as api:
                        ready = await api.get("/readyz")
                    assert ready.status_code == 200
                    if ready.json()["echo"]["ok"] is False:
                        break
                    await trio.sleep(0.1)
            body = ready.json()
            assert body["status"] == "degraded"
            assert "not_member" in body["echo"]["error"]
        finally:
            await db.transaction(rejoin)
        with trio.fail_after(30):  # and it recovers
            while True:
                async with http(srv) as api:
                    body = (await api.get("/readyz")).json()
                if body["echo"]["ok"] is True:
                    break
                await trio.sleep(0.1)


async def test_the_system_channel_and_user_are_seen_by_no_one(db_url: str) -> None:
    async with running_server(db_url) as srv:
        await wait_for_echo_rounds(srv, 0)
        alice = await srv.user("alice", admin=True)
        async with http(srv, alice.token) as api:
            channels = (await api.get("/v1/channels")).json()["channels"]
            assert all(c["channel_id"] != SYSTEM_CHANNEL for c in channels)
            for query in ("", "chatd", "system"):
                found = (await api.get("/v1/users", query=query)).json()["users"]
                assert all(u["user_id"] != SYSTEM_USER for u in found), found
            # Id 0 is no client's to name: no DM with the system user, no reading or sending in its channel.
            assert (await api.post("/v1/channels", {"kind": "dm", "members": [SYSTEM_USER]})).status_code == 400
            assert (await api.get(f"/v1/channels/{SYSTEM_CHANNEL}/messages")).status_code in (400, 404)
            assert (await api.post(f"/v1/channels/{SYSTEM_CHANNEL}/messages",
                                   {"client_msg_id": "x", "text": "hi"})).status_code in (400, 404)
        assert all(u.user_id != SYSTEM_USER for u in await srv.services.users.all())
        assert all(c.channel_id != SYSTEM_CHANNEL for c in await srv.services.channels.summaries())
        stats = await srv.services.admin.stats()
        assert stats.users == 1 and stats.channels == 0 and stats.messages == 0
        async with ws_client(srv, alice.token) as ws:
            error = await ws.send_message(SYSTEM_CHANNEL, "c1", "hello")
            assert error["type"] == "error" and error["code"] == "invalid"


async def test_inbox_backlog_is_the_age_of_the_oldest_event_not_yet_handed_over() -> None:
    class Conn:
        def __init__(self) -> None:
            self.user_id, self.device_id = 7, 1
            self.delivered: int | None = None

        def drain(self, after_ms: int) -> None: ...
        def revoke(self) -> None: ...
        def push_message(self, message: object) -> None: ...

    hub = Hub()
    conn = Conn()
    hub.add_session(conn)
    signal = hub.subscribe(7)
    assert hub.backlog_seconds() == 0
    hub.advance([_advance(7, 1)])
    assert hub.backlog_seconds() == 0  # not following its inbox (no sync): not counted
    conn.delivered = 0
    await trio.sleep(0.05)
    hub.advance([_advance(7, 2)])
    assert hub.backlog_seconds() >= 0.05  # the event at head 1 waits since before the sleep
    conn.delivered = 1
    assert 0 <= hub.backlog_seconds() < 0.05  # only the newer one waits
    conn.delivered = 2
    assert hub.backlog_seconds() == 0
    assert signal.head == 2


def _advance(user_id: int, head: int) -> Any:
    from chatd.models import InboxAdvance

    return InboxAdvance(user_id, head)

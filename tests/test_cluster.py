"""Several ``chatd serve`` processes on one PostgreSQL: cross-node delivery, healing, node death, large channels.

Every check is per device: exactly once, in ``inbox_seq`` order (or ``seq``
order for a large channel's live frames), nothing acknowledged lost.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from chatd.db.migrate import migrate
from chatd.db.stores import Stores
from chatd.embedded import EmbeddedPostgres
from tests.processes import Serving, seed_channel, serving
from tests.support import open_db


@asynccontextmanager
async def nodes(tmp_path: Path, db_url: str, count: int, **env: str) -> AsyncIterator[list[Serving]]:
    async with AsyncExitStack() as stack:
        started = []
        for i in range(count):
            name = f"node-{chr(ord('a') + i)}"
            cwd = tmp_path / name
            cwd.mkdir(exist_ok=True)
            started.append(await stack.enter_async_context(serving(cwd, db_url, {"CHATD_NODE_NAME": name, **env})))
        yield started


class Device:
    """One connected device that follows its inbox and remembers every event it saw."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.live: list[dict[str, Any]] = []
        self.cursor = 0

    async def follow(self, url: str, *, until: int | None = None, stop: trio.Event | None = None) -> None:
        """Connect, sync from the cursor, apply events until ``until`` or ``stop`` (or the socket dies)."""
        ws_url = url.replace("http://", "ws://") + "/v1/ws"
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {self.token}")]) as ws:
            assert json.loads(await ws.get_message())["type"] == "welcome"
            await ws.send_message(json.dumps({"type": "sync", "after": self.cursor}))
            if stop is None:
                await self._apply(ws, until)
                return
            async with trio.open_nursery() as nursery:
                async def stopper() -> None:
                    await stop.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stopper)
                await self._apply(ws, until)
                nursery.cancel_scope.cancel()

    async def _apply(self, ws: Any, until: int | None) -> None:
        while until is None or self.cursor < until:
            frame = json.loads(await ws.get_message())
            if frame["type"] == "event":
                assert frame["inbox_seq"] == self.cursor + 1, (frame["inbox_seq"], self.cursor)
                self.events.append(frame)
                self.cursor = frame["inbox_seq"]
            elif frame["type"] == "message":
                self.live.append(frame)


async def send_all(url: str, token: str, channel: int, ids: list[str]) -> list[dict[str, Any]]:
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    acks = []
    async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {token}")]) as ws:
        await ws.get_message()
        for cmid in ids:
            await ws.send_message(json.dumps({"type": "send", "channel_id": channel, "client_msg_id": cmid,
                                              "text": cmid, "ref": cmid}))
            while True:
                frame = json.loads(await ws.get_message())
                if frame.get("ref") == cmid:
                    assert frame["type"] == "ack", frame
                    acks.append(frame)
                    break
    return acks


async def inbox_of(db_url: str, user_id: int) -> list[dict[str, Any]]:
    async with open_db(db_url) as db:
        return [e.to_frame() for e in await Stores.over(db).inbox.read(user_id, 0, 100000)]


async def test_cross_node_delivery_is_exact_and_ordered(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob", "carol"))
    async with nodes(tmp_path, db_url, 3) as (a, b, c):
        bob_b, bob_c, carol_a = Device(tokens[1]), Device(tokens[1]), Device(tokens[2])
        # 30 from alice on node a, 30 from carol on node c, at once; 1 + 60 events each.
        final = 61
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: bob_b.follow(b.url, until=final))
                nursery.start_soon(lambda: bob_c.follow(c.url, until=final))
                nursery.start_soon(lambda: carol_a.follow(a.url, until=final))
                nursery.start_soon(send_all, a.url, tokens[0], channel, [f"a{i}" for i in range(30)])
                nursery.start_soon(send_all, c.url, tokens[2], channel, [f"c{i}" for i in range(30)])
        for device, user in ((bob_b, ids[1]), (bob_c, ids[1]), (carol_a, ids[2])):
            assert device.events == await inbox_of(db_url, user)
        # Each sender's messages in the order sent.
        for prefix in ("a", "c"):
            mine = [e["client_msg_id"] for e in bob_b.events if e.get("client_msg_id", "").startswith(prefix)]
            assert mine == [f"{prefix}{i}" for i in range(30)]


async def test_a_500_member_group_across_three_nodes(tmp_path: Path, db_url: str) -> None:
    names = tuple(f"u{i:03d}" for i in range(500))
    ids, channel, tokens = await seed_channel(db_url, names)
    watched = [1, 250, 499]  # one member connected to each node
    async with nodes(tmp_path, db_url, 3) as servers:
        devices = [Device(tokens[i]) for i in watched]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for device, srv in zip(devices, servers):
                    nursery.start_soon(lambda d=device, s=srv: d.follow(s.url, until=1 + 5))
                nursery.start_soon(send_all, servers[0].url, tokens[0], channel, [f"big{i}" for i in range(5)])
        for device, i in zip(devices, watched):
            assert device.events == await inbox_of(db_url, ids[i])


async def test_lost_listen_connection_heals(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob"))
    async with nodes(tmp_path, db_url, 2) as (a, b):
        bob = Device(tokens[1])
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: bob.follow(b.url, until=1 + 20))
                await send_all(a.url, tokens[0], channel, [f"before{i}" for i in range(10)])
                async with open_db(db_url) as db:
                    async def kill(conn: Any) -> int:
                        return len(await conn.fetch(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'chatd-listen:node-b'"))

                    assert await db.read(kill) == 1
                # Sent while node b has no LISTEN connection: it must still deliver them.
                await send_all(a.url, tokens[0], channel, [f"after{i}" for i in range(10)])
        assert bob.events == await inbox_of(db_url, ids[1])
        assert "LISTEN connection" in b.stderr()


async def test_sigkill_a_node_under_load_loses_nothing(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob", "carol"))
    per_sender = 40
    async with nodes(tmp_path, db_url, 2) as (a, b):
        devices = [Device(tokens[1]), Device(tokens[2])]
        acked: dict[str, dict[str, Any]] = {}
        killed = trio.Event()

        async def sender(user: int, prefix: str) -> None:
            """Sends through node b; when b dies, retries unacknowledged sends on node a."""
            pending = [f"{prefix}{i}" for i in range(per_sender)]
            url = b.url
            while pending:
                try:
                    for ack in await send_all(url, tokens[user], channel, pending[:5]):
                        acked[ack["client_msg_id"]] = ack
                    pending = [p for p in pending if p not in acked]
                    if len(acked) > per_sender and not killed.is_set():
                        b.proc.send_signal(signal.SIGKILL)  # mid-load
                        killed.set()
                except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
                    url = a.url  # reconnect elsewhere; resend with the same client_msg_ids

        async def receiver(device: Device) -> None:
            url = b.url
            while True:
                try:
                    await device.follow(url, until=1 + 2 * per_sender)
                    return
                except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
                    url = a.url

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(receiver, device)
                nursery.start_soon(sender, 0, "x")
                nursery.start_soon(sender, 1, "y")
        assert killed.is_set()
        assert len(acked) == 2 * per_sender
        for device, user in zip(devices, (ids[1], ids[2])):
            fresh = await inbox_of(db_url, user)
            assert device.events == fresh
            got = [e["client_msg_id"] for e in device.events if e["kind"] == "message"]
            assert sorted(got) == sorted(acked), "a device misses or repeats an acknowledged message"


async def test_large_channel_regimes_and_the_switch(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob", "carol"))
    env = {"CHATD_FANOUT_INBOX_MAX_MEMBERS": "3"}
    async with nodes(tmp_path, db_url, 2, **env) as (a, b):
        bob = Device(tokens[1])
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: bob.follow(b.url, stop=stop))
            # Three members: still small, messages are inbox events.
            await send_all(a.url, tokens[0], channel, ["small1"])
            with trio.fail_after(10):
                while not any(e.get("client_msg_id") == "small1" for e in bob.events):
                    await trio.sleep(0.05)
            # A fourth member: now large.
            async with open_db(db_url) as db:
                dave = await Stores.over(db).users.create("dave", "Dave", None, False)
            async with httpx.AsyncClient(base_url=a.url) as client:
                r = await client.post(f"/v1/channels/{channel}/members", json={"user_ids": [dave.user_id]},
                                      headers={"Authorization": f"Bearer {tokens[0]}"})
                assert r.status_code == 200 and r.json()["member_count"] == 4
            await send_all(a.url, tokens[0], channel, ["large1", "large2"])
            with trio.fail_after(10):
                while len(bob.live) < 2:
                    await trio.sleep(0.05)
            stop.set()
        assert [f["client_msg_id"] for f in bob.live] == ["large1", "large2"]
        assert [f["seq"] for f in bob.live] == [2, 3]
        assert all(f["type"] == "message" and f["channel_id"] == channel for f in bob.live)
        # Not in the inbox; in history.
        inbox = await inbox_of(db_url, ids[1])
        assert [e.get("client_msg_id") for e in inbox if e["kind"] == "message"] == ["small1"]
        async with httpx.AsyncClient(base_url=b.url) as client:
            r = await client.get(f"/v1/channels/{channel}/messages", params={"after": 1},
                                 headers={"Authorization": f"Bearer {tokens[1]}"})
        assert [m["client_msg_id"] for m in r.json()["messages"]] == ["large1", "large2"]


async def test_node_registry_and_stats(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob"))
    async with nodes(tmp_path, db_url, 2) as (a, b):
        ws_url = b.url.replace("http://", "ws://") + "/v1/ws"
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {tokens[1]}")]) as ws:
            await ws.get_message()
            rows: list[Any] = []
            with trio.fail_after(15):
                while not rows or rows[0]["connections"] != 1:
                    await trio.sleep(0.5)
                    async with open_db(db_url) as db:
                        async def read(conn: Any) -> list[Any]:
                            return list(await conn.fetch(
                                "SELECT n.name, n.connections, u.user_id FROM nodes n "
                                "LEFT JOIN node_users u ON u.node = n.name WHERE n.name = 'node-b'"))

                        rows = await db.read(read)
            assert rows[0]["user_id"] == ids[1]
        rc, _ = await a.stop(signal.SIGTERM)
        assert rc == 0
        async with open_db(db_url) as db:
            async def names(conn: Any) -> list[str]:
                return [r["name"] for r in await conn.fetch("SELECT name FROM nodes ORDER BY name")]

            assert await db.read(names) == ["node-b"], "a cleanly stopped node unregisters"


async def test_postgres_restart_unavailable_then_recovers(tmp_path: Path) -> None:
    """Sends answer unavailable and /readyz is 503 while PostgreSQL is down; all recovers by itself."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = pg.acquire()
    try:
        async with open_db(dsn) as db:
            await migrate(db)
        ids, channel, tokens = await seed_channel(dsn, ("alice", "bob"))
        async with serving(tmp_path, dsn, {"CHATD_NODE_NAME": "solo"}) as node:
            assert [a["seq"] for a in await send_all(node.url, tokens[0], channel, ["up1"])] == [1]
            ws_url = node.url.replace("http://", "ws://") + "/v1/ws"
            async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {tokens[0]}")]) as ws:
                await ws.get_message()
                await trio.to_thread.run_sync(pg.release)  # the last owner: PostgreSQL stops
                async with httpx.AsyncClient(base_url=node.url) as client:
                    assert (await client.get("/readyz")).status_code == 503
                    assert (await client.get("/healthz")).status_code == 200
                await ws.send_message(json.dumps({"type": "send", "channel_id": channel,
                                                  "client_msg_id": "down1", "text": "x", "ref": "d"}))
                answer = json.loads(await ws.get_message())
                assert answer["type"] == "error" and answer["code"] == "unavailable", answer
            await trio.to_thread.run_sync(pg.acquire)  # back up, same socket
            with trio.fail_after(20):
                async with httpx.AsyncClient(base_url=node.url) as client:
                    while (await client.get("/readyz")).status_code != 200:
                        await trio.sleep(0.2)
            # The retry with the same client_msg_id is committed now; delivery works again.
            bob = Device(tokens[1])
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: bob.follow(node.url, until=1 + 3))
                    acks = await send_all(node.url, tokens[0], channel, ["down1", "up2"])
            assert [a["seq"] for a in acks] == [2, 3]
            assert [e.get("client_msg_id") for e in bob.events] == [None, "up1", "down1", "up2"]
    finally:
        pg.release()



async def test_logout_and_disable_close_live_connections_on_every_node(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob"))
    async with nodes(tmp_path, db_url, 2) as (a, b):
        ws_url = b.url.replace("http://", "ws://") + "/v1/ws"
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {tokens[0]}")]) as ws:
            await ws.get_message()
            async with httpx.AsyncClient(base_url=a.url) as client:
                r = await client.post("/v1/logout", headers={"Authorization": f"Bearer {tokens[0]}"})
                assert r.status_code == 204
            with trio.fail_after(10):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as closed:
                    assert closed.reason.code == 4001
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {tokens[1]}")]) as ws:
            await ws.get_message()
            async with open_db(db_url) as db:
                await Stores.over(db).users.disable("bob")  # as `chatd user disable bob` does, from outside any node
            with trio.fail_after(10):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as closed:
                    assert closed.reason.code == 4001

"""Receipts, typing and presence across ``chatd serve`` processes on one PostgreSQL.

Typing and large-channel receipt updates reach members on the other node;
presence changes reach subscribers on the other node; a node killed with
SIGKILL does not leave its users online: they go offline within
``presence.timeout_s`` + the registry expiry, and subscribers elsewhere are told.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from chatd.services.cluster import EXPIRY_S, HEARTBEAT_S
from tests.processes import Serving, seed_channel
from tests.test_cluster import nodes


@asynccontextmanager
async def connect(node: Serving, token: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(node.ws_url, extra_headers=[("Authorization", f"Bearer {token}")]) as ws:
        assert json.loads(await ws.get_message())["type"] == "welcome"
        yield ws


async def next_of(ws: WebSocketConnection, kind: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame  # type: ignore[no-any-return]


async def test_typing_and_receipts_cross_nodes(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob", "carol"), messages=3)
    # Three members > 2: receipts of this channel are live receipt_updates.
    async with nodes(tmp_path, db_url, 2, CHATD_RECEIPTS_FANOUT_MAX_MEMBERS="2") as (a, b):
        async with connect(a, tokens[0]) as alice, connect(b, tokens[1]) as bob, connect(b, tokens[0]) as alice_b:
            await alice.send_message(json.dumps({"type": "typing", "channel_id": channel}))
            frame = await next_of(bob, "typing")
            assert frame == {"type": "typing", "channel_id": channel, "user_id": ids[0]}
            await bob.send_message(json.dumps({"type": "receipt", "channel_id": channel, "seq": 3, "state": "read"}))
            update = await next_of(alice, "receipt_update")
            assert update == {"type": "receipt_update", "channel_id": channel, "user_id": ids[1],
                              "state": "read", "seq": 3}
            # Alice's device on node b got the receipt update, never her own typing.
            await next_of(alice_b, "receipt_update")
        async with httpx.AsyncClient(base_url=a.url) as client:
            r = await client.get(f"/v1/channels/{channel}/receipts", params={"seq": 3},
                                 headers={"Authorization": f"Bearer {tokens[2]}"})
            assert r.json()["read"] == 1


async def test_presence_across_nodes_and_a_sigkilled_node(tmp_path: Path, db_url: str) -> None:
    ids, channel, tokens = await seed_channel(db_url, ("alice", "bob", "carol"))
    timeout_s = 2
    async with nodes(tmp_path, db_url, 2, CHATD_PRESENCE_TIMEOUT_S=str(timeout_s)) as (a, b):
        async with connect(a, tokens[0]) as alice:
            await alice.send_message(json.dumps({"type": "presence_subscribe", "user_ids": [ids[1], ids[2]]}))
            assert (await next_of(alice, "presence", user_id=ids[1]))["status"] == "offline"

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _keep(alice, stop, timeout_s))
                async with connect(b, tokens[1]) as bob:
                    # Bob online on node b: alice on node a is told.
                    online = await next_of(alice, "presence", user_id=ids[1])
                    assert online["status"] == "online"
                    async with httpx.AsyncClient(base_url=a.url) as client:
                        r = await client.get("/v1/presence", params={"user_ids": f"{ids[1]}"},
                                             headers={"Authorization": f"Bearer {tokens[2]}"})
                        assert r.json()["presence"][0]["status"] == "online"
                    # Silent past the timeout on node b: offline on node a too.
                    offline = await next_of(alice, "presence", user_id=ids[1])
                    assert offline["status"] == "offline"
                    await bob.send_message(json.dumps({"type": "ping"}))
                    assert (await next_of(alice, "presence", user_id=ids[1]))["status"] == "online"
                    # Carol online on node b, kept alive; then node b is killed.
                    async with connect(b, tokens[2]) as _carol:
                        await next_of(alice, "presence", user_id=ids[2], status="online")
                        killed_at = trio.current_time()
                        b.proc.send_signal(signal.SIGKILL)
                        await b.proc.wait()
                        # No one says goodbye for node b's users: the registry's expiry does.
                        bound = timeout_s + EXPIRY_S + 2 * HEARTBEAT_S + 5
                        gone = await next_of(alice, "presence", timeout=bound, user_id=ids[2], status="offline")
                        assert gone["last_seen"] is not None
                        assert trio.current_time() - killed_at <= bound
                stop.set()
            async with httpx.AsyncClient(base_url=a.url) as client:
                r = await client.get("/v1/presence", params={"user_ids": f"{ids[1]},{ids[2]}"},
                                     headers={"Authorization": f"Bearer {tokens[0]}"})
                assert [p["status"] for p in r.json()["presence"]] == ["offline", "offline"]


async def _keep(ws: WebSocketConnection, stop: trio.Event, timeout_s: float) -> None:
    """Alice keeps herself online (any frame is a heartbeat)."""
    while not stop.is_set():
        await ws.send_message(json.dumps({"type": "ping"}))
        with trio.move_on_after(timeout_s / 4):
            await stop.wait()

"""The drain's spread: sized to the connections a node holds, capped by ``server.drain_spread_max_s``."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatd.drain import RECONNECT_RATE_PER_S, reconnect_spread_ms
from chatd.hub import Hub
from tests.processes import seed_channel, serving
from tests.test_hints import FakeSession


def test_spread_grows_with_connections_and_stops_at_the_cap() -> None:
    assert reconnect_spread_ms(0, 5) == 0
    # A dozen connections: about a tenth of a second, well under one.
    assert reconnect_spread_ms(12, 5) == 12 * 1000 // RECONNECT_RATE_PER_S < 1000
    assert reconnect_spread_ms(200, 5) == 2000
    assert reconnect_spread_ms(100_000, 5) == 5000
    assert reconnect_spread_ms(100_000, 0.25) == 250
    assert reconnect_spread_ms(10, 5, rate_per_s=10) == 1000


def test_hub_drains_every_session_with_one_after_ms_and_remembers_it() -> None:
    hub = Hub()
    sessions = [FakeSession(user_id=u, device_id=10 + i) for i, u in enumerate((1, 1, 2))]
    for session in sessions:
        hub.add_session(session)
    assert hub.connection_count() == 3
    hub.drain(reconnect_spread_ms(hub.connection_count(), 5))
    assert hub.draining.is_set() and hub.drain_after_ms == 30
    assert [s.drained for s in sessions] == [30, 30, 30]


async def drained_after_ms(tmp_path: Path, db_url: str, tokens: list[str], env: dict[str, str]) -> list[int]:
    """Connect every token to one ``chatd serve``, SIGTERM it: the ``after_ms`` each was sent."""
    seen: list[int] = []
    async with serving(tmp_path, db_url, env) as srv:
        connected = 0

        async def client(token: str) -> None:
            nonlocal connected
            async with open_websocket_url(srv.ws_url, extra_headers=[("Authorization", f"Bearer {token}")]) as ws:
                assert json.loads(await ws.get_message())["type"] == "welcome"
                connected += 1
                try:
                    while True:
                        frame = json.loads(await ws.get_message())
                        if frame["type"] == "reconnect":
                            seen.append(frame["after_ms"])
                except ConnectionClosed:
                    pass

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for token in tokens:
                    nursery.start_soon(client, token)
                while connected < len(tokens):
                    await trio.sleep(0.01)
                rc, _ = await srv.stop(signal.SIGTERM)
                assert rc == 0
    return seen


async def test_sigterm_spread_is_sized_to_the_connections_and_capped(tmp_path: Path, db_url: str) -> None:
    names = tuple(f"user{i}" for i in range(12))
    _, _, tokens = await seed_channel(db_url, names)
    # A 30 s heartbeat no longer sets the spread: 12 connections ask for at most 120 ms.
    seen = await drained_after_ms(tmp_path, db_url, tokens, {"CHATD_NODE_NAME": "spread"})
    assert len(seen) == 12 and all(0 <= ms <= reconnect_spread_ms(12, 5) for ms in seen), seen
    # The cap: a node that would ask for 120 ms asks for at most 20.
    capped = await drained_after_ms(
        tmp_path, db_url, tokens, {"CHATD_NODE_NAME": "capped", "CHATD_SERVER_DRAIN_SPREAD_MAX_S": "0.02"}
    )
    assert len(capped) == 12 and all(0 <= ms <= 20 for ms in capped), capped

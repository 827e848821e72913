"""A rolling restart under steady load: every node replaced, one after the other, nothing lost.

Real ``chatd serve`` processes; devices that follow ``reconnect`` and senders
that retry with the same ``client_msg_id`` (chatd.testing_rolling). Each node
is taken out of the set clients connect to, SIGTERMed (it must drain and exit
0), started again and put back once its ``/readyz`` says 200, then the next.
"""

from __future__ import annotations

import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import trio

from chatd.testing_rolling import FollowingDevice, NodeSet, RetryingSender, under_load
from tests.processes import Serving, seed_channel, serving
from tests.test_cli import chatd
from tests.test_cluster import inbox_of

NAMES = ("node-a", "node-b")
RATE_PER_SENDER = 10.0


class RestartableNode:
    """One node name whose ``chatd serve`` process can be replaced."""

    def __init__(self, tmp_path: Path, db_url: str, name: str) -> None:
        self.tmp_path, self.db_url, self.name = tmp_path, db_url, name
        self.generation = 0
        self._cm: AbstractAsyncContextManager[Serving] | None = None
        self.srv: Serving | None = None

    async def start(self) -> str:
        self.generation += 1
        cwd = self.tmp_path / f"{self.name}-{self.generation}"
        cwd.mkdir()
        self._cm = serving(cwd, self.db_url, {"CHATD_NODE_NAME": self.name})
        self.srv = await self._cm.__aenter__()
        async with httpx.AsyncClient(base_url=self.srv.url) as client:
            with trio.fail_after(20):
                while (await client.get("/readyz")).status_code != 200:
                    await trio.sleep(0.05)
        return self.srv.url

    async def stop(self) -> tuple[int, float]:
        assert self.srv is not None and self._cm is not None
        try:
            return await self.srv.stop(signal.SIGTERM, within=30)
        finally:
            await self._cm.__aexit__(None, None, None)
            self._cm = self.srv = None


async def test_rolling_restart_of_every_node_under_load_loses_nothing(tmp_path: Path, db_url: str) -> None:
    names = ("alice", "bob", "carol", "dave", "erin", "frank")
    ids, channel, tokens = await seed_channel(db_url, names)
    nodes = [RestartableNode(tmp_path, db_url, n) for n in NAMES]
    view = NodeSet({})
    try:
        for node in nodes:
            view.up(node.name, await node.start())
        devices = [FollowingDevice(token, view) for token in tokens]
        senders = [RetryingSender(tokens[i], channel, view, f"s{i}") for i in range(2)]
        drains: list[tuple[int, float]] = []

        async def roll() -> None:
            await trio.sleep(1.5)
            for node in nodes:
                view.down(node.name)
                drains.append(await node.stop())
                view.up(node.name, await node.start())
                await trio.sleep(1.0)
            await trio.sleep(0.5)

        async def heads() -> list[int]:
            return [len(await inbox_of(db_url, uid)) for uid in ids]

        with trio.fail_after(120):
            await under_load(devices, senders, RATE_PER_SENDER, roll, heads)
        for rc, took in drains:
            assert rc == 0 and took < 10, drains
        acked = {cmid for s in senders for cmid in s.acked}
        sent = sum(len(s.lag_s) for s in senders)
        assert len(acked) == sent >= 2 * RATE_PER_SENDER * 3  # every send acked; load all through the restarts
        for device, uid in zip(devices, ids):
            assert device.out_of_order == 0 and device.duplicates() == 0
            assert device.events == await inbox_of(db_url, uid)  # exactly once, in order, gapless
            got = {e["client_msg_id"] for e in device.events if e["kind"] == "message"}
            assert acked <= got, "an acknowledged send is missing on a device"
            assert device.after_ms and all(0 <= ms < 1000 for ms in device.after_ms), device.after_ms
            assert len(device.waits_s) >= 1
    finally:
        for node in nodes:
            if node.srv is not None:
                await node.stop()
    verified = await chatd(tmp_path, db_url, "verify")
    assert verified.rc == 0, verified

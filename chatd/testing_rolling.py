"""Clients that follow the protocol through rolling restarts; shared by the tests and the benchmarks.

Never imported by the server. A rolling restart is judged from the clients'
side: devices that obey ``reconnect`` (wait a random time up to ``after_ms``,
then go to another node and ``sync`` from their cursor) and senders that
retry an unacknowledged send with the same ``client_msg_id`` wherever they
land. The runner (a test, a benchmark) starts and stops the nodes and keeps
:class:`NodeSet` current, as a load balancer following ``/readyz`` would.

Each message's text is the trio clock time it was due (one process, one
clock), so a device measures send->deliver including any time spent waiting
for a reconnect.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, connect_websocket_url

#: What a client sees when a node goes away under it.
DISCONNECTED = (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError)
#: A client's backoff between failed connection attempts (jittered, doubling).
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


class NodeSet:
    """The base URLs of the nodes that serve now, by node name."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = dict(urls)

    def down(self, name: str) -> None:
        self.urls.pop(name, None)

    def up(self, name: str, url: str) -> None:
        self.urls[name] = url

    def pick(self, avoid: str | None = None) -> str:
        """A serving node, another than ``avoid`` when there is one."""
        choices = [u for u in self.urls.values() if u != avoid] or list(self.urls.values())
        if not choices:
            raise LookupError("no node is serving")
        return random.choice(choices)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/v1/ws"


async def _connect(nursery: trio.Nursery, nodes: NodeSet, token: str, avoid: str | None) -> tuple[WebSocketConnection, str]:
    """Open a connection to some serving node and read its ``welcome``; back off between failures."""
    backoff = BACKOFF_FIRST_S
    while True:
        try:
            url = nodes.pick(avoid)
        except LookupError:
            url = None
        if url is not None:
            try:
                with trio.fail_after(10):
                    ws = await connect_websocket_url(
                        nursery, ws_url(url), extra_headers=[(b"Authorization", f"Bearer {token}".encode())]
                    )
                    welcome = json.loads(await ws.get_message())
                if welcome.get("type") == "welcome":
                    return ws, url
                await ws.aclose()
            except (*DISCONNECTED, trio.TooSlowError):
                pass
        await trio.sleep(random.uniform(0.5, 1.0) * backoff)
        backoff = min(BACKOFF_MAX_S, backoff * 2)
        avoid = None


class FollowingDevice:
    """One device following its inbox across restarts: exactly once, in order, or counted as bad."""

    def __init__(self, token: str, nodes: NodeSet) -> None:
        self.token = token
        self.nodes = nodes
        self.cursor = 0
        #: Set by the runner once every send is acknowledged: the user's inbox head.
        self.target: int | None = None
        self.events: list[dict[str, Any]] = []
        self.out_of_order = 0
        self.delivery_s: list[float] = []
        #: From a ``reconnect`` frame (or a lost connection) to ``synced`` on another node.
        self.waits_s: list[float] = []
        self.after_ms: list[int] = []

    def done(self) -> bool:
        return self.target is not None and self.cursor >= self.target

    def duplicates(self) -> int:
        counts = Counter(e["client_msg_id"] for e in self.events if e.get("kind") == "message")
        return sum(n - 1 for n in counts.values())

    async def run(self) -> None:
        avoid: str | None = None
        left_at: float | None = None
        while not self.done():
            async with trio.open_nursery() as nursery:
                ws, url = await _connect(nursery, self.nodes, self.token, avoid)
                try:
                    await ws.send_message(json.dumps({"type": "sync", "after": self.cursor}))
                    left_at = await self._follow(ws, left_at)
                except DISCONNECTED:
                    left_at = left_at or trio.current_time()
                avoid = url
                await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _follow(self, ws: WebSocketConnection, left_at: float | None) -> float | None:
        """Apply frames until done (None) or told to go: then the time it was told."""
        while not self.done():
            with trio.move_on_after(0.2):  # to notice the runner's target
                frame = json.loads(await ws.get_message())
                kind = frame.get("type")
                if kind == "synced" and left_at is not None:
                    self.waits_s.append(trio.current_time() - left_at)
                    left_at = None
                elif kind == "event":
                    self._apply(frame)
                elif kind == "reconnect":
                    told = trio.current_time()
                    self.after_ms.append(frame["after_ms"])
                    await trio.sleep(random.uniform(0, frame["after_ms"] / 1000))
                    return told
        return None

    def _apply(self, frame: dict[str, Any]) -> None:
        if frame["inbox_seq"] != self.cursor + 1:
            if frame["inbox_seq"] <= self.cursor:
                self.out_of_order += 1  # a repeat
                return
            self.out_of_order += 1  # a gap: keep going, counted
        self.events.append(frame)
        self.cursor = frame["inbox_seq"]
        if frame.get("kind") == "message":
            try:
                self.delivery_s.append(trio.current_time() - float(frame["text"]))
            except (KeyError, ValueError):
                pass


class RetryingSender:
    """Sends on a clock; an unacknowledged send is retried with the same ``client_msg_id`` until acked."""

    def __init__(self, token: str, channel_id: int, nodes: NodeSet, prefix: str) -> None:
        self.token = token
        self.channel_id = channel_id
        self.nodes = nodes
        self.prefix = prefix
        #: client_msg_id -> the ack frame (the first one; a retry's ack has ``duplicate``).
        self.acked: dict[str, dict[str, Any]] = {}
        self.retries = 0
        self.waits_s: list[float] = []
        self.after_ms: list[int] = []

    async def run(self, rate_per_s: float, until: float) -> None:
        """Send one message every 1/rate s (or late, never skipped) until the clock reaches ``until``."""
        start = trio.current_time()
        period = 1 / rate_per_s
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection | None = None
            url: str | None = None
            left_at: float | None = None
            i = -1
            while (due := start + (i := i + 1) * period) < until:
                await trio.sleep_until(due)
                cmid = f"{self.prefix}-{i}"
                while cmid not in self.acked:
                    if ws is None:
                        ws, url = await _connect(nursery, self.nodes, self.token, url)
                        if left_at is not None:
                            self.waits_s.append(trio.current_time() - left_at)
                            left_at = None
                    try:
                        told = await self._send(ws, cmid, due)
                    except DISCONNECTED:
                        told = left_at or trio.current_time()
                        self.retries += cmid not in self.acked
                    if told is not None:  # draining, or gone: go elsewhere
                        left_at = told
                        await ws.aclose()
                        ws = None
            if ws is not None:
                await ws.aclose()
            nursery.cancel_scope.cancel()

    async def _send(self, ws: WebSocketConnection, cmid: str, due: float) -> float | None:
        """One attempt: wait for its ack (or a retryable error). Returns when told to reconnect."""
        frame_out = {"type": "send", "channel_id": self.channel_id, "client_msg_id": cmid, "text": f"{due:.6f}",
                     "ref": cmid}
        await ws.send_message(json.dumps(frame_out))
        told: float | None = None
        after_ms = 0
        while True:
            frame = json.loads(await ws.get_message())
            kind = frame.get("type")
            if kind == "reconnect":
                told = trio.current_time()
                after_ms = frame["after_ms"]
                self.after_ms.append(after_ms)
            elif frame.get("ref") == cmid and kind == "ack":
                self.acked[cmid] = frame
                break
            elif frame.get("ref") == cmid and kind == "error":
                if frame.get("code") != "unavailable":
                    raise RuntimeError(f"send {cmid} refused: {frame}")
                self.retries += 1
                told = told or trio.current_time()
                break
        if told is not None:
            await trio.sleep(random.uniform(0, after_ms / 1000))
        return told

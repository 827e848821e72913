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
from collections.abc import Awaitable, Callable, Sequence
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


async def _close(ws: WebSocketConnection) -> None:
    """Close in the background, bounded: the node may be busy draining, or gone."""
    with trio.move_on_after(5):
        await ws.aclose()


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
            ws: WebSocketConnection | None = None
            try:
                with trio.fail_after(10):
                    ws = await connect_websocket_url(
                        nursery, ws_url(url), extra_headers=[(b"Authorization", f"Bearer {token}".encode())]
                    )
                    welcome = json.loads(await ws.get_message())
                if welcome.get("type") == "welcome":
                    return ws, url
            except (*DISCONNECTED, trio.TooSlowError):
                pass
            if ws is not None:
                nursery.start_soon(_close, ws)  # no welcome in time: give the attempt up, not leave it open
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
        #: (due time, send->deliver seconds) of each message event.
        self.deliveries: list[tuple[float, float]] = []
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
        async with trio.open_nursery() as nursery:
            while not self.done():
                ws, url = await _connect(nursery, self.nodes, self.token, avoid)
                try:
                    await ws.send_message(json.dumps({"type": "sync", "after": self.cursor}))
                    left_at = await self._follow(ws, left_at)
                except DISCONNECTED:
                    left_at = left_at or trio.current_time()
                avoid = url
                nursery.start_soon(_close, ws)  # not waiting for a draining node to answer the close
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
                due = float(frame["text"])
            except (KeyError, ValueError):
                return
            self.deliveries.append((due, trio.current_time() - due))


class RetryingSender:
    """Sends on a clock, not waiting for acks; whatever is unacknowledged is sent again, with the same
    ``client_msg_id``, on the next connection (the node it went to may have committed it or not)."""

    def __init__(self, token: str, channel_id: int, nodes: NodeSet, prefix: str) -> None:
        self.token = token
        self.channel_id = channel_id
        self.nodes = nodes
        self.prefix = prefix
        #: client_msg_id -> the ack frame (the first one; a retry's ack has ``duplicate``).
        self.acked: dict[str, dict[str, Any]] = {}
        #: Sends written again on a later connection.
        self.retries = 0
        #: Due time to the first write of each message: how far this sender fell behind its clock.
        self.lag_s: list[float] = []
        #: From ``reconnect`` (or a lost connection) to the next ``welcome``.
        self.waits_s: list[float] = []
        self.after_ms: list[int] = []
        #: Due time to ack, per acknowledged message.
        self.ack_s: list[float] = []
        self._unacked: dict[str, str] = {}  # client_msg_id -> frame, in send order
        self._written: set[str] = set()
        self._ws: WebSocketConnection | None = None
        self._lock = trio.Lock()  # a connection's resends, then new sends: in order

    async def run(self, rate_per_s: float, stop: trio.Event, ack_timeout_s: float = 60) -> None:
        """Send one message every 1/rate s (late, never skipped) until ``stop``; then wait for every ack."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._connections, nursery)
            start = trio.current_time()
            i = 0
            while not stop.is_set():
                due = start + i * (1 / rate_per_s)
                with trio.move_on_at(due):
                    await stop.wait()
                if stop.is_set():
                    break
                cmid = f"{self.prefix}-{i}"
                i += 1
                frame = json.dumps({"type": "send", "channel_id": self.channel_id, "client_msg_id": cmid,
                                    "text": f"{due:.6f}", "ref": cmid})
                async with self._lock:
                    self._unacked[cmid] = frame
                    self.lag_s.append(trio.current_time() - due)
                    if self._ws is not None:
                        try:
                            self._written.add(cmid)
                            await self._ws.send_message(frame)
                        except DISCONNECTED:
                            pass  # the connection task notices, and sends it again elsewhere
            with trio.fail_after(ack_timeout_s):
                while self._unacked:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _connections(self, nursery: trio.Nursery) -> None:
        url: str | None = None
        left_at: float | None = None
        while True:
            ws, url = await _connect(nursery, self.nodes, self.token, url)
            if left_at is not None:
                self.waits_s.append(trio.current_time() - left_at)
            try:
                async with self._lock:
                    for cmid, frame in list(self._unacked.items()):
                        self.retries += cmid in self._written
                        self._written.add(cmid)
                        await ws.send_message(frame)
                    self._ws = ws
                left_at = await self._read(ws, nursery)
            except DISCONNECTED:
                left_at = trio.current_time()
                async with self._lock:
                    self._ws = None
                nursery.start_soon(_close, ws)

    def _acked(self, frame: dict[str, Any]) -> None:
        sent = self._unacked.pop(frame["client_msg_id"], None)
        if sent is not None:
            self.ack_s.append(trio.current_time() - float(json.loads(sent)["text"]))
        self.acked.setdefault(frame["client_msg_id"], frame)

    async def _read(self, ws: WebSocketConnection, nursery: trio.Nursery) -> float:
        """Take acks until the node says ``reconnect`` (or refuses a send as unavailable): the time it did.

        From then on no new send goes to this node; the acks of sends already
        written to it are still taken, in the background, until it closes.
        After the random wait, whatever is still unacknowledged is sent again
        on the next connection.
        """
        while True:
            frame = json.loads(await ws.get_message())
            kind = frame.get("type")
            if kind == "ack":
                self._acked(frame)
            elif kind == "error":
                if frame.get("code") != "unavailable":
                    raise RuntimeError(f"send refused: {frame}")
                told, after_ms = trio.current_time(), 0
                break
            elif kind == "reconnect":
                told, after_ms = trio.current_time(), frame["after_ms"]
                self.after_ms.append(after_ms)
                break
        async with self._lock:
            self._ws = None
        nursery.start_soon(self._last_acks, ws)
        await trio.sleep_until(told + random.uniform(0, after_ms / 1000))
        return told

    async def _last_acks(self, ws: WebSocketConnection) -> None:
        with trio.move_on_after(10):
            try:
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") == "ack":
                        self._acked(frame)
            except DISCONNECTED:
                pass
        await _close(ws)


async def under_load(
    devices: Sequence[FollowingDevice],
    senders: Sequence[RetryingSender],
    rate_per_sender: float,
    during: Callable[[], Awaitable[None]],
    heads: Callable[[], Awaitable[Sequence[int]]],
) -> None:
    """Devices follow and senders send while ``during`` runs (the restarts); then the senders stop
    and wait for every ack, and each device follows up to its user's inbox head (``heads``, in order)."""
    async with trio.open_nursery() as nursery:
        for device in devices:
            nursery.start_soon(device.run)
        stop = trio.Event()
        async with trio.open_nursery() as load:
            for sender in senders:
                load.start_soon(sender.run, rate_per_sender, stop)
            await during()
            stop.set()
        for device, head in zip(devices, await heads()):
            device.target = head

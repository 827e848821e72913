"""Prometheus metrics (PROTOCOL §2 ``/metrics``), through ``prometheus_client``.

Two kinds of metric, for two costs:

- **Hot-path counts** (frames, sends, connections) are plain integers in
  module-level dicts, bumped by one-line calls from the session and the
  services (:func:`frame_in`, :func:`frame_out`, :func:`send_outcome`,
  :func:`connection_opened`). No label dict is built and no lock is taken per
  frame: the values become Prometheus families only when ``/metrics`` is
  scraped (:class:`_ProcessCounts`). They count per process, which is one node
  in production (two in-process test servers share them).
- **Histograms** (:data:`SEND_ACK`, :data:`ECHO_ROUNDTRIP`,
  :data:`COMMIT_BATCH`) are ``prometheus_client`` histograms, observed once
  per send, per probe round and per commit batch.
- **Node gauges** (pool in use, inbox backlog, NOTIFY lag, push queue) are
  read at scrape time from what the node already holds (:class:`NodeGauges`),
  so nothing is kept up to date between scrapes.

Labels stay sparse: wire format, direction and frame type, send outcome. No
per-user or per-channel label, ever: their number would grow with the
install.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import attrs
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chatd.errors import ChatdError

#: The ``Content-Type`` of a scrape.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# --- hot-path counts: plain integers, read at scrape time ---------------------------------

#: Client frames received, by frame type ("invalid" for those that fail to decode).
FRAMES_IN: defaultdict[str, int] = defaultdict(int)
for _type in ("sync", "send", "receipt", "typing", "presence_subscribe", "ping", "invalid"):
    FRAMES_IN[_type] = 0
#: Server frames queued to clients, by frame type (or by outbound frame class, named at scrape).
FRAMES_OUT: defaultdict[object, int] = defaultdict(int)
#: Sends answered, by outcome: sent, duplicate, or the error code.
SENDS: defaultdict[str, int] = defaultdict(int)
# The outcomes an alert or a rate() looks for exist (at 0) before the first send.
for _outcome in ("sent", "duplicate", "unavailable", "rate_limited", "not_member", "invalid", "too_large"):
    SENDS[_outcome] = 0
#: Open WebSocket connections, by wire format ("json", "msgpack").
CONNECTIONS: defaultdict[str, int] = defaultdict(int)


def frame_in(kind: str) -> None:
    FRAMES_IN[kind] += 1


def frame_out(kind: object) -> None:
    """``kind``: a frame type string, or an outbound frame class (named at scrape time)."""
    FRAMES_OUT[kind] += 1


def send_outcome(outcome: str) -> None:
    SENDS[outcome] += 1


def connection_opened(fmt: str) -> None:
    CONNECTIONS[fmt] += 1


def connection_closed(fmt: str) -> None:
    CONNECTIONS[fmt] -= 1


# --- histograms ----------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: From a send arriving (WebSocket frame or HTTP request) to its answer being ready.
SEND_ACK = Histogram(
    "chatd_send_ack_seconds", "Time from a send arriving to its ack (after the commit).",
    buckets=_LATENCY_BUCKETS, registry=None,
)
#: The echo probe's round trip: commit, NOTIFY, delivery to a live receiver.
ECHO_ROUNDTRIP = Histogram(
    "chatd_echo_roundtrip_seconds",
    "The echo probe's round trip: a message to itself through commit, NOTIFY and live delivery.",
    buckets=_LATENCY_BUCKETS, registry=None,
)
#: Sends per group-commit transaction.
COMMIT_BATCH = Histogram(
    "chatd_commit_batch_size", "Sends committed together in one group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=None,
)


def _frame_name(kind: object) -> str:
    if isinstance(kind, str):
        return kind
    name = getattr(kind, "__name__", str(kind))
    return _OUTBOUND_NAMES.get(name, name.lower())


#: Outbound frame classes (chatd.wire.outbound) whose wire type is not their lower-cased name.
_OUTBOUND_NAMES = {"AckFrame": "ack", "ErrorFrame": "error", "LiveMessage": "message"}


class _ProcessCounts(Collector):
    """The hot-path integers as Prometheus families (built only when scraped)."""

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily(
            "chatd_frames", "WebSocket frames, by direction and type.", labels=("direction", "type")
        )
        for name_in, n in list(FRAMES_IN.items()):
            frames.add_metric(("in", name_in), n)
        out: defaultdict[str, int] = defaultdict(int)
        for kind, n in list(FRAMES_OUT.items()):
            out[_frame_name(kind)] += n
        for name, n in out.items():
            frames.add_metric(("out", name), n)
        yield frames
        sends = CounterMetricFamily("chatd_sends", "Sends answered, by outcome.", labels=("outcome",))
        for outcome, n in list(SENDS.items()):
            sends.add_metric((outcome,), n)
        yield sends
        connections = GaugeMetricFamily(
            "chatd_connections", "Open WebSocket connections, by wire format.", labels=("format",)
        )
        for fmt in ("json", "msgpack"):
            connections.add_metric((fmt,), CONNECTIONS.get(fmt, 0))
        yield connections


# --- node gauges -----------------------------------------------------------------------------


@attrs.frozen
class PushQueue:
    """The push outbox as a gauge reads it: queued deliveries and the oldest one's age."""

    depth: int = 0
    oldest_s: float = 0.0


class PushQueueProvider(Protocol):
    """What ``chatd_push_queue_depth`` / ``chatd_push_oldest_seconds`` and ``chatd stats`` read:
    the push outbox (chatd.db.push.PushStore)."""

    async def push_queue(self) -> PushQueue: ...


@attrs.frozen
class Registry:
    """The cluster registry as this node reads it: alive nodes, and whether this node is one."""

    alive_nodes: int = 0
    registered: bool = False


@attrs.define
class NodeSample:
    """What the node gauges show, refreshed (asynchronously) just before each scrape."""

    pool_in_use: int = 0
    push: PushQueue = PushQueue()
    database_up: bool = False
    registry: Registry = Registry()


class NodeGauges(Collector):
    """This node's gauges: read from the node's own state at scrape time.

    ``backlog`` and ``notify_lag`` are synchronous reads of in-process state
    (the hub, the echo probe); ``refresh`` is awaited before each scrape for
    what needs the database thread (pool sizes) or a query (the push queue).
    """

    def __init__(
        self,
        *,
        backlog: Callable[[], float],
        notify_lag: Callable[[], float],
        pool_in_use: Callable[[], Awaitable[int]],
        push: PushQueueProvider,
        database_up: Callable[[], Awaitable[bool]],
        registry: Callable[[], Awaitable[Registry]],
    ) -> None:
        self._backlog = backlog
        self._notify_lag = notify_lag
        self._pool_in_use = pool_in_use
        self.push = push
        self._database_up = database_up
        self._registry = registry
        self.sample = NodeSample()

    async def refresh(self) -> None:
        """Read what needs the database; when it is away, the push and registry gauges keep
        their last values and ``chatd_database_up`` says 0."""
        last = self.sample
        up = await self._database_up()
        push, registry = last.push, last.registry
        if up:
            try:
                push = await self.push.push_queue()
                registry = await self._registry()
            except ChatdError:
                up = False
        self.sample = NodeSample(await self._pool_in_use(), push, up, registry)

    def collect(self) -> Iterable[Metric]:
        s = self.sample
        yield _gauge("chatd_db_pool_in_use", "Database connections of the pool in use.", s.pool_in_use)
        yield _gauge(
            "chatd_inbox_backlog_seconds",
            "Age of the oldest inbox event this node knows of and has not yet queued to a connected device.",
            self._backlog(),
        )
        yield _gauge(
            "chatd_notify_lag_seconds",
            "From the echo probe's send to its commit's NOTIFY arriving back at this node (last round).",
            self._notify_lag(),
        )
        yield _gauge("chatd_database_up", "1 while the database answers and migrations are current.",
                     float(s.database_up))
        yield _gauge("chatd_registry_alive_nodes", "Nodes alive in the cluster registry, as this node reads it.",
                     s.registry.alive_nodes)
        yield _gauge("chatd_registry_registered", "1 while this node is alive in the cluster registry.",
                     float(s.registry.registered))
        yield _gauge("chatd_push_queue_depth", "Push deliveries queued.", s.push.depth)
        yield _gauge("chatd_push_oldest_seconds", "Age of the oldest queued push delivery.", s.push.oldest_s)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """One node's registry: the process's counts and histograms plus its own gauges."""

    def __init__(self, node: NodeGauges) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (_ProcessCounts(), SEND_ACK, ECHO_ROUNDTRIP, COMMIT_BATCH, node):
            self.registry.register(collector)

    async def scrape(self) -> bytes:
        """The Prometheus text exposition of everything, node gauges refreshed first."""
        await self.node.refresh()
        return generate_latest(self.registry)


# --- the send decorator ---------------------------------------------------------------------

_Send = TypeVar("_Send", bound=Callable[..., Awaitable[Any]])


def measured_send(send: _Send) -> _Send:
    """Count a send's outcome and time it to its ack (``chatd_sends_total``, ``chatd_send_ack_seconds``).

    Wraps the send service's one entry point, so WebSocket and HTTP sends are
    counted alike. The outcome is ``sent``, ``duplicate`` or the error's code.
    """

    @functools.wraps(send)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            ack = await send(*args, **kwargs)
        except ChatdError as exc:
            SENDS[exc.code] += 1
            raise
        SENDS["duplicate" if ack.duplicate else "sent"] += 1
        SEND_ACK.observe(time.perf_counter() - start)
        return ack

    return wrapper  # type: ignore[return-value]

"""The composition root: wires the stores, hub, services, HTTP and WebSocket, and runs them.

One port serves both (chatd.web.listener): ``/v1/ws`` upgrades go to the
wsproto endpoint, everything else to hypercorn serving a small ASGI
dispatcher (the Quart app, plus the ASGI WebSocket handler for upgrades on
keep-alive connections).

Stopping (:meth:`Server.stop`, on SIGTERM/SIGINT): stop accepting, tell every
client ``reconnect`` (spread by chatd.drain over the time the other nodes need
to take its connections), let in-flight sends commit
and their acks go out, then close; hypercorn cancels what is still open after
``server.drain_timeout_s``. Then the LISTEN task and the pool close.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig

from chatd import hints
from chatd.config import Config
from chatd.db.bridge import Database
from chatd.db.migrate import is_current, migrate
from chatd.db.stores import Stores
from chatd.drain import reconnect_spread_ms
from chatd.errors import Unavailable
from chatd.hub import Hub
from chatd.metrics import Metrics, NodeGauges, PushQueueProvider, Registry
from chatd.services.admin import AdminService
from chatd.services.auth import AuthService
from chatd.services.channels import ChannelService
from chatd.services.cluster import LiveFanout, NodeRegistry
from chatd.services.echo import EchoProbe
from chatd.services.retention import RetentionJob
from chatd.db.livehints import LiveHintStore
from chatd.services.conversation import ConversationService
from chatd.services.inbox import InboxService
from chatd.services.livebus import LiveBus, LiveDelivery
from chatd.services.presence import PresenceService
from chatd.services.receipts import ReceiptService, ReceiptWriter
from chatd.services.typing import TypingService
from chatd.services.media import MediaService
from chatd.services.messaging import MessageService
from chatd.services.push import PushService, PushWorker
from chatd.services.ratelimit import RateLimiter
from chatd.services.users import UserService
from chatd.services.writer import SendWriter
from chatd.web import listener
from chatd.web.http_api import build_http_app, json_errors
from chatd.web.http_conn import Timeouts
from chatd.web.http_media import MediaHttp, is_media_path
from chatd.web.origins import OriginPolicy
from chatd.web.ws_wsproto import WsprotoEndpoint
from chatd.ws.heartbeat import sweep_idle
from chatd.ws.live import LiveServices
from chatd.ws.session import Session, SessionSettings

log = logging.getLogger(__name__)

#: A user's control frames on this node, all connections together (each connection
#: also has its own, smaller budget: chatd.ws.session).
CONTROL_BURST_PER_USER = 400
CONTROL_RATE_PER_USER_S = 80.0
LISTEN_BACKOFF_MAX_S = 5.0


@attrs.define
class Services:
    stores: Stores
    hub: Hub
    auth: AuthService
    users: UserService
    admin: AdminService
    channels: ChannelService
    messages: MessageService
    conversation: ConversationService
    inbox: InboxService
    writer: SendWriter
    registry: NodeRegistry
    live: LiveFanout
    #: Control frames (sync, ping, typing, presence_subscribe) per user on this node.
    control: RateLimiter
    echo: EchoProbe
    #: Receipts, typing and presence (issue 9): the live bus and its users.
    bus: LiveBus
    delivery: LiveDelivery
    receipt_writer: ReceiptWriter
    receipts: ReceiptService
    presence: PresenceService
    typing: TypingService

    @property
    def live_services(self) -> LiveServices:
        return LiveServices(self.receipt_writer, self.typing, self.presence)
    media: MediaService
    push: PushService
    push_worker: PushWorker
    #: Old history to tombstones, the system channel pruned (issue 13).
    retention: RetentionJob

    @classmethod
    def build(cls, db: Database, config: Config) -> Services:
        stores = Stores.over(db)
        hub = Hub()
        limiter = RateLimiter(config.limits.send_rate_per_s, config.limits.send_burst)
        live = LiveFanout(stores.channels, stores.messages, hub)
        media = MediaService(stores.media, max_bytes=config.limits.media_max_bytes)
        push = PushService(stores.push)
        push_worker = PushWorker(
            stores.push,
            push,
            config.node_name,
            max_age_s=config.push.max_age_s,
            allow_private_targets=config.push.allow_private_targets,
            include_preview=config.push.include_preview,
        )
        stores.messages.on_push_queued = push_worker.wake
        writer = SendWriter(
            stores.messages, hub, inbox_max_members=config.fanout.inbox_max_members, on_large_message=live.committed
        )
        # Catch-up reads in batches, at most half the pool's connections at once.
        inbox = InboxService(stores.inbox, hub, readers=max(1, config.database.pool_max // 2))
        live_hints = LiveHintStore(db)
        bus = LiveBus(live_hints, config.node_name)
        presence = PresenceService(stores.presence, bus, config.node_name, timeout_s=config.presence.timeout_s)
        receipt_writer = ReceiptWriter(
            stores.receipts, hub, bus, fanout_max_members=config.receipts.fanout_max_members
        )
        return cls(
            stores=stores,
            hub=hub,
            auth=AuthService(
                stores.users,
                hub,
                login_attempts_per_min=config.security.login_attempts_per_min,
                token_ttl_days=config.security.token_ttl_days,
            ),
            users=UserService(stores.users),
            admin=AdminService(stores.checks, stores.nodes),
            channels=ChannelService(
                stores.channels,
                hub,
                max_group_members=config.limits.max_group_members,
                ops=RateLimiter(config.limits.channel_ops_per_min / 60, config.limits.channel_ops_burst),
                invites=RateLimiter(config.limits.channel_invites_per_min / 60, config.limits.channel_invites_burst),
            ),
            messages=MessageService(
                stores.messages,
                limiter,
                writer,
                max_text_chars=config.limits.max_text_chars,
                media=media,
            ),
            conversation=ConversationService(
                stores.conversation,
                hub,
                max_text_chars=config.limits.max_text_chars,
                inbox_max_members=config.fanout.inbox_max_members,
            ),
            inbox=inbox,
            writer=writer,
            registry=NodeRegistry(stores.nodes, hub, config.node_name),
            live=live,
            control=RateLimiter(CONTROL_RATE_PER_USER_S, CONTROL_BURST_PER_USER),
            echo=EchoProbe(writer, inbox, hub, stores.nodes, config.node_name),
            bus=bus,
            delivery=LiveDelivery(live_hints, hub, presence.hinted),
            receipt_writer=receipt_writer,
            receipts=ReceiptService(stores.receipts, receipt_writer),
            presence=presence,
            typing=TypingService(stores.receipts, bus),
            media=media,
            push=push,
            push_worker=push_worker,
            retention=RetentionJob(stores.retention, config.retention.days),
        )


class Server:
    """One chatd node: start it with ``nursery.start(server.run)``; it reports its URL."""

    def __init__(self, config: Config, dsn: str, *, push_queue: PushQueueProvider | None = None) -> None:
        self.config = config
        self.dsn = dsn
        self._stop = trio.Event()
        self.services: Services | None = None
        self.db: Database | None = None
        self.metrics: Metrics | None = None
        #: What the push gauges read: the push outbox (chatd.db.push), unless a test gives another.
        self.push_queue = push_queue

    def stop(self) -> None:
        """Begin the graceful stop (idempotent)."""
        self._stop.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, migrate, listen; ``task_status.started(url)``; serve until stopped."""
        cfg = self.config
        self.db = db = await Database.connect(
            self.dsn,
            min_size=cfg.database.pool_min,
            max_size=cfg.database.pool_max,
            application_name=f"chatd:{cfg.node_name}",
        )
        try:
            await migrate(db)
            self.services = services = Services.build(db, cfg)
            self.metrics = self._metrics(db, services)
            app = self._asgi_app(services)
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen_forever, db, services)
                await nursery.start(services.writer.run)
                await nursery.start(services.bus.run)
                await nursery.start(services.delivery.run)
                await nursery.start(services.receipt_writer.run)
                await nursery.start(services.presence.run)
                await nursery.start(services.live.run)
                await nursery.start(services.inbox.run)
                await nursery.start(functools.partial(sweep_idle, services.hub, cfg.server.heartbeat_s))
                url = await nursery.start(self._serve_http, app)
                await nursery.start(services.registry.run, url)
                await nursery.start(services.echo.run)
                log.info("node %s listening on %s", cfg.node_name, url)
                task_status.started(url)
                # After the announcement: its imports cost start-up time (chatd.services.push).
                nursery.start_soon(services.push_worker.run)
                nursery.start_soon(services.retention.run)
                await self._stop.wait()
                # hypercorn stops accepting as soon as _stop is set (its shutdown trigger).
                services.hub.drain(
                    spread_ms=reconnect_spread_ms(services.hub.connection_count(), cfg.server.drain_spread_max_s)
                )
                await self._http_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await db.close()

    def _metrics(self, db: Database, services: Services) -> Metrics:
        async def pool_in_use() -> int:
            idle, size = await db.pool_sizes()
            return size - idle

        async def registry() -> Registry:
            nodes = await services.admin.nodes()
            return Registry(
                sum(1 for n in nodes if n.alive), any(n.alive and n.name == self.config.node_name for n in nodes)
            )

        echo = services.echo
        return Metrics(NodeGauges(
            backlog=services.hub.backlog_seconds,
            notify_lag=lambda: echo.notify_lag_s,
            pool_in_use=pool_in_use,
            push=self.push_queue or services.stores.push,
            database_up=self._ready,
            registry=registry,
        ))

    async def _scrape(self) -> bytes:
        assert self.metrics is not None
        return await self.metrics.scrape()

    def _echo_status(self) -> dict[str, object]:
        return self.services.echo.status.to_json() if self.services is not None else {"ok": None}

    def _asgi_app(self, services: Services) -> Any:
        cfg = self.config
        origins = OriginPolicy(cfg.security.allowed_origins)
        http_app = build_http_app(
            auth=services.auth,
            users=services.users,
            channels=services.channels,
            messages=services.messages,
            inbox=services.inbox,
            receipts=services.receipts,
            presence=services.presence,
            conversation=services.conversation,
            ready=self._ready,
            echo_status=self._echo_status,
            scrape=self._scrape,
            max_group_members=cfg.limits.max_group_members,
            origins=origins,
            body_timeout_s=cfg.server.body_timeout_s,
            push=services.push,
        )
        media_http = MediaHttp(
            services.auth.authenticate, services.media, origins=origins, body_timeout_s=cfg.server.body_timeout_s
        )
        guarded_http = json_errors(http_app)  # type: ignore[arg-type]
        settings = SessionSettings(
            node=cfg.node_name,
            heartbeat_s=cfg.server.heartbeat_s,
            outgoing_queue=cfg.server.outgoing_queue,
            send_stall_s=cfg.server.send_stall_s,
        )

        live_services = services.live_services

        def make_session(transport: Any, fmt: Any, principal: Any) -> Session:
            return Session(
                transport,
                fmt,
                principal,
                hub=services.hub,
                inbox=services.inbox,
                messages=services.messages,
                settings=settings,
                control=services.control,
                live=live_services,
            )

        self._ws_fast = WsprotoEndpoint(
            services.auth.authenticate, make_session, cfg.limits.max_frame_bytes, origins
        )

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "websocket":
                # Unreachable through chatd.web.listener, which serves every
                # upgrade with self._ws_fast; refuse rather than run a second
                # WebSocket implementation with other limits.
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            if is_media_path(scope.get("path", "")):
                await media_http(scope, receive, send)
                return
            await guarded_http(scope, receive, send)

        return app

    async def _ready(self) -> bool:
        if self.db is None or self._stop.is_set():
            return False
        try:
            with trio.fail_after(2):
                return await is_current(self.db)
        except (Unavailable, trio.TooSlowError):
            return False

    async def _serve_http(self, app: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._http_done = trio.Event()
        cfg = self.config
        hc = HypercornConfig()
        hc.graceful_timeout = cfg.server.drain_timeout_s
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        hc.keep_alive_timeout = cfg.server.keepalive_timeout_s
        try:
            await listener.serve(
                app,
                hc,
                self._ws_fast,
                host=cfg.server.host,
                port=cfg.server.port,
                shutdown_trigger=self._stop.wait,
                timeouts=Timeouts(
                    head_s=cfg.server.head_timeout_s,
                    body_s=cfg.server.body_timeout_s,
                    keepalive_s=cfg.server.keepalive_timeout_s,
                ),
                task_status=task_status,
            )
        finally:
            self._http_done.set()

    async def _listen_forever(self, db: Database, services: Services, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the LISTEN connection; on loss, back off, reconnect and wake every session.

        Reports started after the first attempt, successful or not: a node whose
        LISTEN connection is down still serves, with its own writes' wake-ups.
        """
        hub, live = services.hub, services.live
        backoff = 0.1
        started = False

        def ready() -> None:
            nonlocal backoff, started
            backoff = 0.1
            # Anything committed while we were not listening: everyone re-reads.
            hub.wake_all()
            if not started:
                started = True
                task_status.started()
            else:
                log.info("LISTEN connection restored")

        echo = self.services.echo if self.services is not None else None

        def notified(pid: int, payload: str) -> None:
            hint = hints.parse(payload)
            if echo is not None:
                echo.hinted(hint)
            from_this_node = pid in db.backend_pids
            if isinstance(hint, hints.Live):
                services.delivery.received(hint)
            elif isinstance(hint, hints.ChannelMessage):
                # This node's own large-channel writes were pushed by the writer.
                if not from_this_node:
                    live.hinted(hint.channel_id, hint.seq)
            elif isinstance(hint, hints.MessageChanged):
                live.changed(hint)  # every node, this one included: the hint is the only path
            else:
                hub.apply(hint, from_this_node=from_this_node)

        while True:
            try:
                await db.listen(
                    hints.CHANNEL, notified, ready, application_name=f"chatd-listen:{self.config.node_name}"
                )
            except Unavailable as exc:
                log.warning("LISTEN connection lost (%s); retrying in %.1fs", exc, backoff)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(backoff)
            backoff = min(LISTEN_BACKOFF_MAX_S, backoff * 2)

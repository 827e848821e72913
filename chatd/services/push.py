"""Offline push (PROTOCOL §7): subscriptions, the VAPID key, and the delivery worker of each node.

Pushes are queued by the send's own transaction (chatd.db.push.enqueue).
Every node runs a :class:`PushWorker`: it claims due pushes (a lease, so one
push is never delivered from two nodes at once), delivers them with at most
:data:`IN_FLIGHT` requests at a time and :data:`REQUEST_TIMEOUT_S` each,
then records the round: delivered; to retry after an exponential backoff
with jitter; dropped once older than ``push.max_age_s``; or, on 404/410, the
subscription removed. The node that committed a push wakes its own worker
at once; the others find it on their next poll (:data:`POLL_S`).

Kinds: ``webhook`` POSTs the payload as JSON; ``webpush`` encrypts it per
RFC 8291 (aes128gcm, with ``http_ece``) and signs a VAPID JWT (RFC 8292, with
``py_vapid``) with the cluster's key pair, made once and kept in the
database. HTTP goes through httpx (on Trio through anyio).

The HTTP client and the crypto libraries are imported when first needed (the
worker starts after the node listens): together they cost ~1 s of start-up
on a busy 2-core machine, and ``chatd serve`` announces itself sooner.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from typing import TYPE_CHECKING

import trio

from chatd.db.push import PushStore, Retry
from chatd.errors import Invalid, NotFound, Unavailable
from chatd.models import Principal, PushJob, PushSubscription
from chatd.services import push_targets
from chatd.services.push_targets import TargetRefused

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: Rounds running at once per node, each claiming its own pushes (SKIP LOCKED keeps them apart):
#: a slow target holds up only its own round, never the whole node's pushes.
LANES = 4
#: Requests in flight per lane (LANES x IN_FLIGHT per node).
IN_FLIGHT = 16
#: Pushes claimed per round.
CLAIM_BATCH = 64
#: One delivery's bound (connect, send, answer).
REQUEST_TIMEOUT_S = 10.0
#: A claimed push is another node's to take only after this (well past the request timeout).
LEASE_S = 6 * REQUEST_TIMEOUT_S
#: Longest wait between looks at the outbox (pushes other nodes queued, retries coming due).
POLL_S = 1.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 3600.0
#: How long a Web Push service keeps an undelivered message (the TTL header).
WEBPUSH_TTL_S = 86400
VAPID_SUBJECT = "mailto:chatd@localhost"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_vapid_keys() -> tuple[str, str]:
    """A new P-256 key pair: (private key as PEM, public key as base64url of the uncompressed point)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return pem, b64url(public)


def backoff_s(attempts: int) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) of the step: retries of many pushes spread out."""
    step = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return float(step * (0.5 + random.random()))


class PushService:
    """Subscriptions (the HTTP endpoints) and the VAPID public key."""

    def __init__(self, store: PushStore) -> None:
        self.store = store
        self._vapid: tuple[str, str] | None = None

    async def vapid_keys(self) -> tuple[str, str]:
        if self._vapid is None:
            self._vapid = await self.store.vapid(make_vapid_keys)
        return self._vapid

    async def subscribe(self, principal: Principal, body: Any) -> PushSubscription:
        kind = body.get("kind")
        if kind == "webhook":
            url = push_targets.check_url(body.get("url"))
            return await self.store.subscribe(principal.user_id, principal.device_id, kind, url, None, None)
        if kind == "webpush":
            from cryptography.hazmat.primitives.asymmetric import ec

            url = push_targets.check_url(body.get("endpoint"))
            keys = body.get("keys")
            if not isinstance(keys, dict):
                raise Invalid("keys: {p256dh, auth}")
            p256dh, auth = keys.get("p256dh"), keys.get("auth")
            try:
                if not isinstance(p256dh, str) or len(b64url_decode(p256dh)) != 65 or p256dh.startswith("="):
                    raise ValueError
                if not isinstance(auth, str) or len(b64url_decode(auth)) != 16:
                    raise ValueError
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(p256dh))
            except (ValueError, TypeError):
                raise Invalid("keys: p256dh is a base64url P-256 point, auth 16 base64url bytes") from None
            return await self.store.subscribe(principal.user_id, principal.device_id, kind, url, p256dh, auth)
        raise Invalid('kind: "webhook" or "webpush"')

    async def list(self, principal: Principal) -> list[PushSubscription]:
        return await self.store.subscriptions(principal.device_id)

    async def unsubscribe(self, principal: Principal, subscription_id: int) -> None:
        if not await self.store.unsubscribe(subscription_id, principal.user_id):
            raise NotFound("no such subscription")


class PushWorker:
    """Delivers the outbox; one per node."""

    def __init__(
        self,
        store: PushStore,
        service: PushService,
        node: str,
        *,
        max_age_s: float,
        allow_private_targets: bool,
        include_preview: bool,
    ) -> None:
        self.store = store
        self.service = service
        self.node = node
        self.max_age_s = max_age_s
        self.allow_private = allow_private_targets
        self.include_preview = include_preview
        #: One wake-up per lane: each lane waits on its own and re-arms it.
        self._wakes = [trio.Event() for _ in range(LANES)]
        self.delivered = 0
        self.failed = 0

    def wake(self) -> None:
        """Pushes were just queued (by this node's writer): look now. Safe from any Trio task."""
        for event in self._wakes:
            event.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import httpx

        total = LANES * IN_FLIGHT
        limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits, follow_redirects=False) as client:
            async with trio.open_nursery() as nursery:
                for lane in range(LANES):
                    nursery.start_soon(self._lane, client, lane)
                task_status.started()

    async def _lane(self, client: httpx.AsyncClient, lane: int) -> None:
        while True:
            self._wakes[lane] = trio.Event()
            try:
                await self.service.vapid_keys()  # made by the first node that starts, then shared
                busy = await self.round(client)
            except Unavailable as exc:
                log.warning("push round skipped: %s", exc)
                busy = False
            except Exception:  # a bug in one round must not stop the node: the rows stay queued
                log.exception("push round failed")
                busy = False
            if busy:
                continue
            with trio.move_on_after(POLL_S):
                await self._wakes[lane].wait()

    async def round(self, client: httpx.AsyncClient) -> bool:
        """Claim and deliver one batch; True when it was full (more may be due)."""
        jobs = await self.store.claim(self.node, CLAIM_BATCH, LEASE_S, include_preview=self.include_preview)
        if not jobs:
            return False
        delivered: list[int] = []
        retries: list[Retry] = []
        gone: set[int] = set()
        limiter = trio.CapacityLimiter(IN_FLIGHT)

        async def one(job: PushJob) -> None:
            async with limiter:
                outcome = await self._deliver(client, job)
            if outcome == "ok":
                delivered.append(job.push_id)
                self.delivered += 1
                return
            if outcome == "gone":
                gone.add(job.subscription.subscription_id)
                return
            self.failed += 1
            age = (datetime.now(timezone.utc) - job.created_at).total_seconds()
            delay = backoff_s(job.attempts)
            if age + delay > self.max_age_s:
                log.warning("push %d dropped after %d attempts: %s", job.push_id, job.attempts, outcome)
                delivered.append(job.push_id)  # given up: removed like a delivered one
            else:
                retries.append(Retry(job.push_id, delay, outcome[:500]))

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(one, job)
        with trio.CancelScope(shield=True):
            await self.store.settle(delivered, retries, sorted(gone))
        return len(jobs) == CLAIM_BATCH

    async def _deliver(self, client: httpx.AsyncClient, job: PushJob) -> str:
        """One delivery: "ok", "gone" (404/410), or what went wrong. Never raises for the target's faults."""
        import httpx

        sub = job.subscription
        try:
            target = await push_targets.resolve(sub.url, allow_private=self.allow_private)
            if sub.kind == "webpush":
                body, headers = await self._webpush(sub, job.payload)
            else:
                body = json.dumps(job.payload, ensure_ascii=False, separators=(",", ":")).encode()
                headers = {"Content-Type": "application/json"}
            headers["Host"] = urlsplit(sub.url).netloc
            extensions = {"sni_hostname": target.sni} if target.sni else {}
            with trio.fail_after(REQUEST_TIMEOUT_S + 1):
                answer = await client.post(target.url, content=body, headers=headers, extensions=extensions)
        except TargetRefused as exc:
            return f"refused: {exc}"
        except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or an odd target must not stop the other deliveries
            log.exception("push %d to subscription %d failed", job.push_id, sub.subscription_id)
            return f"{type(exc).__name__}"
        if answer.status_code in (404, 410):
            log.info("push subscription %d gone (%d); removed", sub.subscription_id, answer.status_code)
            return "gone"
        if 200 <= answer.status_code < 300:
            return "ok"
        return f"HTTP {answer.status_code}"

    async def _webpush(self, sub: PushSubscription, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """RFC 8291 aes128gcm body and RFC 8292 VAPID headers for one subscription."""
        import http_ece
        from cryptography.hazmat.primitives.asymmetric import ec
        from py_vapid import Vapid02

        private_pem, _ = await self.service.vapid_keys()
        assert sub.p256dh is not None and sub.auth is not None
        body = http_ece.encrypt(
            json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=b64url_decode(sub.p256dh),
            auth_secret=b64url_decode(sub.auth),
            version="aes128gcm",
        )
        parts = urlsplit(sub.url)
        vapid = Vapid02.from_pem(private_pem.encode("ascii"))
        claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + 12 * 3600, "sub": VAPID_SUBJECT}
        headers: dict[str, str] = dict(vapid.sign(claims))
        headers.update({"Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream",
                        "TTL": str(WEBPUSH_TTL_S), "Urgency": "high"})
        return body, headers


def subscriptions_json(found: Sequence[PushSubscription]) -> dict[str, Any]:
    return {"subscriptions": [s.to_json() for s in found]}

"""Push (PROTOCOL §7): subscriptions, the outbox, and the shared VAPID key.

The outbox is written by :func:`enqueue` inside the send's own transaction,
so a push exists exactly when its message does. Workers on every node
:meth:`PushStore.claim` due rows with ``FOR UPDATE SKIP LOCKED`` and move
their ``due_at`` past the delivery timeout in the same statement (a lease):
no two nodes hold the same push at once, and a push whose node died
mid-delivery becomes due again when the lease ends (at-least-once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from chatd.db.bridge import Connection, Database
from chatd.metrics import PushQueue
from chatd.models import PushJob, PushSubscription

# Recipients with no live connection on any node (the registry's node_users),
# through each subscription of a device whose token still works.
#: The insert, from any ``source`` of rows (user_id, channel_id, seq, mention): parameters,
#: or (:data:`chatd.db.messages`) the rows of the send statement itself.
ENQUEUE_FROM = """
INSERT INTO push_outbox (subscription_id, user_id, channel_id, seq, mention)
SELECT s.id, t.user_id, t.channel_id, t.seq, t.mention
FROM {source} AS t (user_id, channel_id, seq, mention)
JOIN push_subscriptions s ON s.user_id = t.user_id
JOIN devices d ON d.id = s.device_id AND d.revoked_at IS NULL
WHERE NOT EXISTS (SELECT 1 FROM node_users nu WHERE nu.user_id = t.user_id)
"""
_ENQUEUE = ENQUEUE_FROM.format(source="unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[])")
_SUBSCRIBE = """
INSERT INTO push_subscriptions (user_id, device_id, kind, url, p256dh, auth)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (device_id, url) DO UPDATE SET kind = excluded.kind, p256dh = excluded.p256dh, auth = excluded.auth
RETURNING id AS subscription_id, user_id, device_id, kind, url, p256dh, auth
"""
_SUBSCRIPTIONS = """
SELECT id AS subscription_id, user_id, device_id, kind, url, p256dh, auth
FROM push_subscriptions WHERE device_id = $1 ORDER BY id
"""
_UNSUBSCRIBE = "DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2 RETURNING id"
_CLAIM = """
WITH due AS (
    SELECT id FROM push_outbox WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE push_outbox o
    SET due_at = now() + make_interval(secs => $2), attempts = o.attempts + 1, claimed_by = $3
    FROM due WHERE o.id = due.id
    RETURNING o.*
)
SELECT o.id, o.attempts, o.created_at, o.mention, o.user_id, o.channel_id, o.seq,
       s.id AS subscription_id, s.device_id, s.kind, s.url, s.p256dh, s.auth,
       m.sender_id, m.text, u.display_name AS sender_name, c.name AS channel_name
FROM claimed o
JOIN push_subscriptions s ON s.id = o.subscription_id
LEFT JOIN messages m ON m.channel_id = o.channel_id AND m.seq = o.seq
LEFT JOIN users u ON u.id = m.sender_id
LEFT JOIN channels c ON c.id = o.channel_id
ORDER BY o.id
"""
_DELIVERED = "DELETE FROM push_outbox WHERE id = ANY($1::bigint[])"
_RETRY = """
UPDATE push_outbox o SET due_at = now() + make_interval(secs => t.delay), last_error = t.error, claimed_by = NULL
FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS t (id, delay, error)
WHERE o.id = t.id
"""
_REMOVE_SUBSCRIPTIONS = "DELETE FROM push_subscriptions WHERE id = ANY($1::bigint[])"
_PUT_VAPID = "INSERT INTO push_vapid (id, private_pem, public_key) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING"
_VAPID = "SELECT private_pem, public_key FROM push_vapid WHERE id = 1"


@attrs.frozen
class Recipient:
    """A user a message event was just committed for (the sender excluded)."""

    user_id: int
    channel_id: int
    seq: int
    mention: bool = False


@attrs.frozen
class Retry:
    push_id: int
    delay_s: float
    error: str


async def enqueue(conn: Connection, recipients: Sequence[Recipient]) -> int:
    """In a send's transaction: one outbox row per subscription of each offline recipient."""
    if not recipients:
        return 0
    status = await conn.execute(
        _ENQUEUE,
        [r.user_id for r in recipients],
        [r.channel_id for r in recipients],
        [r.seq for r in recipients],
        [r.mention for r in recipients],
    )
    return int(status.rsplit(" ", 1)[-1])


def subscription(record: Any) -> PushSubscription:
    return PushSubscription(
        subscription_id=record["subscription_id"],
        user_id=record["user_id"],
        device_id=record["device_id"],
        kind=record["kind"],
        url=record["url"],
        p256dh=record["p256dh"],
        auth=record["auth"],
    )


def _job(record: Any, include_preview: bool) -> PushJob:
    text = record["text"]
    payload = {
        "user_id": record["user_id"],
        "channel_id": record["channel_id"],
        "seq": record["seq"],
        "sender_id": record["sender_id"],
        "sender_name": record["sender_name"],
        "channel_name": record["channel_name"],
        "mention": record["mention"],
        "preview": text[:100] if include_preview and text is not None else None,
    }
    return PushJob(record["id"], subscription(record), record["attempts"], record["created_at"], payload)


_QUEUE = """
SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_s
FROM push_outbox
"""


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def push_queue(self) -> PushQueue:
        """Deliveries queued on every node, and the oldest one's age (for /metrics and ``chatd stats``)."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_QUEUE)

        row = await self.db.read(unit)
        return PushQueue(depth=row["depth"], oldest_s=row["oldest_s"])

    async def subscribe(
        self, user_id: int, device_id: int, kind: str, url: str, p256dh: str | None, auth: str | None
    ) -> PushSubscription:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_SUBSCRIBE, user_id, device_id, kind, url, p256dh, auth)

        return subscription(await self.db.transaction(unit))

    async def subscriptions(self, device_id: int) -> list[PushSubscription]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_SUBSCRIPTIONS, device_id))

        return [subscription(r) for r in await self.db.read(unit)]

    async def unsubscribe(self, subscription_id: int, user_id: int) -> bool:
        """Remove one of the user's subscriptions (and its pending pushes); False if it has none of that id."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchval(_UNSUBSCRIBE, subscription_id, user_id)

        return await self.db.transaction(unit) is not None

    async def claim(self, node: str, limit: int, lease_s: float, *, include_preview: bool) -> list[PushJob]:
        """Take up to ``limit`` due pushes for this node, for ``lease_s`` seconds."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_CLAIM, limit, lease_s, node))

        return [_job(r, include_preview) for r in await self.db.transaction(unit)]

    async def settle(self, delivered: Sequence[int], retries: Sequence[Retry], gone: Sequence[int]) -> None:
        """Record a round of deliveries: done (or dropped), to retry later, subscriptions gone (404/410)."""

        async def unit(conn: Connection) -> None:
            if delivered:
                await conn.execute(_DELIVERED, list(delivered))
            if retries:
                await conn.execute(
                    _RETRY, [r.push_id for r in retries], [r.delay_s for r in retries], [r.error for r in retries]
                )
            if gone:
                await conn.execute(_REMOVE_SUBSCRIPTIONS, list(gone))

        await self.db.transaction(unit)

    async def vapid(self, make: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        """The cluster's VAPID key pair (private PEM, public key): the stored one, or
        ``make()``'s, stored by whichever node got there first."""

        async def unit(conn: Connection) -> Any:
            found = await conn.fetchrow(_VAPID)
            if found is None:
                private_pem, public_key = make()
                await conn.execute(_PUT_VAPID, private_pem, public_key)
                found = await conn.fetchrow(_VAPID)
            return found

        r = await self.db.transaction(unit)
        return r["private_pem"], r["public_key"]

"""Publishing a node's gathered live hints (chatd.hints.Live): one statement, one commit.

Every commit that carries a NOTIFY takes PostgreSQL's instance-wide notify
lock (shared/DESIGN.md, Cluster), so the caller gathers typing, presence and
large-channel receipt news and calls this at most every few tens of
milliseconds; the payloads of one call share one commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatd import hints
from chatd.db.bridge import Connection, Database

#: Nothing here needs to be durable: the commit does not wait for its WAL flush
#: (``synchronous_commit`` off for this transaction only), so it does not hold
#: PostgreSQL's notify lock across an fsync, which every other notifying commit
#: (the send batches) would wait for.
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
_NOTIFY = f"SELECT pg_notify('{hints.CHANNEL}', p) FROM unnest($1::text[]) AS p"
_MEMBERS_AMONG = """
SELECT channel_id, user_id FROM members WHERE channel_id = ANY($1::bigint[]) AND user_id = ANY($2::bigint[])
"""


class LiveHintStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def publish(self, payloads: Sequence[str]) -> None:
        async def unit(conn: Connection) -> None:
            await conn.execute(_ASYNC_COMMIT)
            await conn.execute(_NOTIFY, list(payloads))

        await self.db.transaction(unit)

    async def members_among(self, channel_ids: Sequence[int], user_ids: Sequence[int]) -> dict[int, list[int]]:
        """Which of these users are members of each of these channels: one query for a
        whole live hint, whatever the number of channels in it."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_MEMBERS_AMONG, list(channel_ids), list(user_ids)))

        found: dict[int, list[int]] = {}
        for r in await self.db.read(unit):
            found.setdefault(r["channel_id"], []).append(r["user_id"])
        return found

"""Publishing a node's gathered live hints (chatd.hints.Live): one statement, one commit.

Every commit that carries a NOTIFY takes PostgreSQL's instance-wide notify
lock (shared/DESIGN.md, Cluster), so the caller gathers typing, presence and
large-channel receipt news and calls this at most every few tens of
milliseconds; the payloads of one call share one commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatd import hints
from chatd.db.bridge import Connection, Database

_NOTIFY = f"SELECT pg_notify('{hints.CHANNEL}', p) FROM unnest($1::text[]) AS p"


class LiveHintStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def publish(self, payloads: Sequence[str]) -> None:
        async def unit(conn: Connection) -> None:
            await conn.execute(_NOTIFY, list(payloads))

        await self.db.transaction(unit)

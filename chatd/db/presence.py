"""Each user's persisted ``last_seen`` (``user_presence``), written lazily.

Live presence is kept in each node's memory (chatd.services.presence); this
table only keeps a sensible ``last_seen`` across restarts: it is written when a
user goes offline and every few minutes while online, in batches, never per
frame. It also reads which users each live node holds (``node_users``), the
snapshot a starting node begins from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from chatd.db.bridge import Connection, Database

_SAVE = """
INSERT INTO user_presence (user_id, last_seen)
SELECT u, t FROM unnest($1::bigint[], $2::timestamptz[]) AS x (u, t)
ON CONFLICT (user_id) DO UPDATE SET last_seen = greatest(user_presence.last_seen, excluded.last_seen)
"""
_LOAD = "SELECT user_id, last_seen FROM user_presence WHERE user_id = ANY($1::bigint[])"
_NODE_USERS = "SELECT node, user_id FROM node_users"
_LIVE_NODES = "SELECT name, started_at FROM nodes WHERE heartbeat_at >= now() - make_interval(secs => $1)"


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, last_seen: Mapping[int, datetime]) -> None:
        """Record these users' last_seen (never moving one backwards); one statement."""
        if not last_seen:
            return
        users = sorted(last_seen)

        async def unit(conn: Connection) -> None:
            await conn.execute(_SAVE, users, [last_seen[u] for u in users])

        await self.db.transaction(unit)

    async def load(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_LOAD, list(user_ids)))

        return {r["user_id"]: r["last_seen"] for r in await self.db.read(unit)}

    async def node_users(self) -> list[tuple[str, int]]:
        """(node, user) for every user connected to a registered node."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_NODE_USERS))

        return [(r["node"], r["user_id"]) for r in await self.db.read(unit)]

    async def live_nodes(self, expiry_s: float) -> dict[str, datetime]:
        """The nodes that beat within ``expiry_s``, with the time each (re)started."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_LIVE_NODES, expiry_s))

        return {r["name"]: r["started_at"] for r in await self.db.read(unit)}

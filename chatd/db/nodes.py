"""The node registry: which chatd nodes are up, and which users each one serves.

Each node keeps its ``nodes`` row fresh with a heartbeat and writes the users
whose connection count changed to ``node_users``; any node expires the silent
ones (chatd.services.cluster).
"""

from __future__ import annotations

from typing import Any

from chatd.db.bridge import Connection, Database
from chatd.models import EchoRecord, Heartbeat, NodeState

_REGISTER_NODE = """
INSERT INTO nodes (name, url) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET url = $2, started_at = now(), heartbeat_at = now(), connections = 0
"""
_FORGET_NODE_USERS = "DELETE FROM node_users WHERE node = $1"
_HEARTBEAT = "UPDATE nodes SET heartbeat_at = now(), connections = $2 WHERE name = $1 RETURNING name"
_UPSERT_NODE_USERS = """
INSERT INTO node_users (node, user_id, connections)
SELECT $1, u, c FROM unnest($2::bigint[], $3::int[]) AS t (u, c)
ON CONFLICT (node, user_id) DO UPDATE SET connections = excluded.connections
"""
_DELETE_NODE_USERS = "DELETE FROM node_users WHERE node = $1 AND user_id = ANY($2::bigint[])"
_EXPIRE_NODES = "DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING name"
_UNREGISTER_NODE = "DELETE FROM nodes WHERE name = $1"
_NODES = """
SELECT name, url, started_at, heartbeat_at, connections,
       heartbeat_at >= now() - make_interval(secs => $1) AS alive
FROM nodes ORDER BY name
"""
_RECORD_ECHO = """
INSERT INTO node_echo (node, roundtrip_s, error) VALUES ($1, $2, $3)
ON CONFLICT (node) DO UPDATE SET roundtrip_s = $2, error = $3, at = now()
"""
_ECHOES = """
SELECT e.node, e.roundtrip_s, e.error, e.at FROM node_echo e JOIN nodes n ON n.name = e.node ORDER BY e.node
"""
_NODE_CONNECTIONS = """
SELECT substr(application_name, 7) AS node, count(*) AS n FROM pg_stat_activity
WHERE application_name LIKE 'chatd:%' AND datname = current_database() GROUP BY 1 ORDER BY 1
"""


class NodeStore:
    """The ``nodes`` and ``node_users`` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def register(self, name: str, url: str) -> None:
        """Announce this node (a restarted node of the same name starts afresh)."""

        async def unit(conn: Connection) -> None:
            await conn.execute(_REGISTER_NODE, name, url)
            await conn.execute(_FORGET_NODE_USERS, name)

        await self.db.transaction(unit)

    async def heartbeat(self, name: str, connections: int, changed: dict[int, int], expiry_s: float) -> Heartbeat:
        """Record this node's heartbeat and the users whose connection count changed
        (0: gone); expire nodes silent for ``expiry_s``."""
        present = [(u, n) for u, n in changed.items() if n > 0]
        gone = [u for u, n in changed.items() if n <= 0]

        async def unit(conn: Connection) -> Heartbeat:
            expired = tuple(r["name"] for r in await conn.fetch(_EXPIRE_NODES, expiry_s))
            known = await conn.fetchval(_HEARTBEAT, name, connections) is not None
            if known:
                if present:
                    await conn.execute(_UPSERT_NODE_USERS, name, [u for u, _ in present], [n for _, n in present])
                if gone:
                    await conn.execute(_DELETE_NODE_USERS, name, gone)
            return Heartbeat(known, expired)

        return await self.db.transaction(unit)

    async def unregister(self, name: str) -> None:
        async def unit(conn: Connection) -> None:
            await conn.execute(_UNREGISTER_NODE, name)

        await self.db.transaction(unit)

    async def all(self, expiry_s: float) -> list[NodeState]:
        """Every registered node; ``alive`` when it beat within ``expiry_s``."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_NODES, expiry_s))

        return [
            NodeState(r["name"], r["url"], r["started_at"], r["heartbeat_at"], r["connections"], r["alive"])
            for r in await self.db.read(unit)
        ]

    async def connections(self) -> dict[str, int]:
        """Database connections per chatd node (application_name ``chatd:<node>``)."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_NODE_CONNECTIONS))

        return {r["node"]: r["n"] for r in await self.db.read(unit)}

    async def record_echo(self, name: str, roundtrip_s: float | None, error: str | None) -> None:
        """This node's last echo round (chatd.services.echo), for ``chatd stats``."""

        async def unit(conn: Connection) -> None:
            await conn.execute(_RECORD_ECHO, name, roundtrip_s, error)

        await self.db.transaction(unit)

    async def echoes(self) -> list[EchoRecord]:
        """The last echo round of every registered node."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_ECHOES))

        return [EchoRecord(r["node"], r["roundtrip_s"], r["error"], r["at"]) for r in await self.db.read(unit)]

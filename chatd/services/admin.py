"""What the operator reads: row counts, the node registry, and the stored invariants."""

from __future__ import annotations

from chatd.db.nodes import NodeStore
from chatd.db.verify import Checks
from chatd.models import EchoRecord, NodeState, Stats
from chatd.services.cluster import EXPIRY_S


class AdminService:
    def __init__(self, checks: Checks, nodes: NodeStore) -> None:
        self.checks = checks
        self.nodes_store = nodes

    async def stats(self) -> Stats:
        return await self.checks.stats()

    async def nodes(self) -> list[NodeState]:
        """The registered nodes; ``alive`` when heard from within the cluster's expiry."""
        return await self.nodes_store.all(EXPIRY_S)

    async def echoes(self) -> list[EchoRecord]:
        """Each registered node's last echo-probe round."""
        return await self.nodes_store.echoes()

    async def server_version(self) -> str:
        return await self.checks.server_version()

    async def database_connections(self) -> dict[str, int]:
        return await self.nodes_store.connections()

    async def verify(self) -> list[str]:
        """Every broken invariant, one line each; empty when all hold."""
        return await self.checks.verify()

"""What ``chatd verify`` and ``chatd stats`` read: the stored invariants and the row counts.

Each check is a query that returns rows only when its invariant is broken;
``chatd verify`` prints one line per row.
"""

from __future__ import annotations

from typing import Any

from chatd.db.bridge import Connection, Database
from chatd.models import Stats

_STATS = """
SELECT (SELECT count(*) FROM users) AS users,
       (SELECT count(*) FROM channels) AS channels,
       (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM inbox) AS inbox_events
"""
#: The stored invariants; each query returns rows only when something is broken.
VERIFY_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "channel seq not contiguous",
        """
        SELECT c.id, c.last_seq, count(m.seq) AS n, coalesce(max(m.seq), 0) AS top, coalesce(min(m.seq), 1) AS low
        FROM channels c LEFT JOIN messages m ON m.channel_id = c.id
        GROUP BY c.id HAVING count(m.seq) <> c.last_seq OR coalesce(max(m.seq), 0) <> c.last_seq
            OR coalesce(min(m.seq), 1) <> 1
        """,
    ),
    (
        "user inbox_seq not contiguous",
        """
        SELECT u.id, u.inbox_head, count(i.inbox_seq) AS n, coalesce(max(i.inbox_seq), 0) AS top
        FROM users u LEFT JOIN inbox i ON i.user_id = u.id
        GROUP BY u.id HAVING count(i.inbox_seq) <> u.inbox_head OR coalesce(max(i.inbox_seq), 0) <> u.inbox_head
            OR coalesce(min(i.inbox_seq), 1) <> 1
        """,
    ),
    (
        "inbox entry for an unknown user",
        "SELECT i.user_id, i.inbox_seq FROM inbox i LEFT JOIN users u ON u.id = i.user_id WHERE u.id IS NULL LIMIT 10",
    ),
    (
        "inbox entry pointing to a missing message",
        """
        SELECT i.user_id, i.inbox_seq FROM inbox i
        LEFT JOIN messages m ON m.channel_id = i.channel_id AND m.seq = i.seq
        WHERE i.kind = 'message' AND m.seq IS NULL LIMIT 10
        """,
    ),
    (
        "message in an unknown channel",
        """
        SELECT m.channel_id, m.seq FROM messages m LEFT JOIN channels c ON c.id = m.channel_id
        WHERE c.id IS NULL LIMIT 10
        """,
    ),
    (
        "receipt watermark past the channel's last_seq",
        """
        SELECT m.channel_id, m.user_id FROM members m JOIN channels c ON c.id = m.channel_id
        WHERE m.delivered_seq > c.last_seq OR m.read_seq > c.last_seq LIMIT 10
        """,
    ),
    (
        "read watermark past the delivered one",
        "SELECT channel_id, user_id, delivered_seq, read_seq FROM members WHERE read_seq > delivered_seq LIMIT 10",
    ),
    (
        "member_count out of date",
        """
        SELECT c.id FROM channels c LEFT JOIN members m ON m.channel_id = c.id
        GROUP BY c.id HAVING count(m.user_id) <> c.member_count LIMIT 10
        """,
    ),
)


class Checks:
    """Read-only: the invariants and the counts, for the operator."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def verify(self) -> list[str]:
        """Every broken invariant, one line each; empty when all hold."""

        async def unit(conn: Connection) -> list[str]:
            problems = []
            for name, query in VERIFY_CHECKS:
                for record in await conn.fetch(query):
                    detail = ", ".join(f"{k}={v}" for k, v in record.items())
                    problems.append(f"{name}: {detail}")
            return problems

        return await self.db.read(unit)

    async def stats(self) -> Stats:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_STATS)

        r = await self.db.read(unit)
        return Stats(users=r["users"], channels=r["channels"], messages=r["messages"], inbox_events=r["inbox_events"])

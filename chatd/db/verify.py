"""What ``chatd verify`` and ``chatd stats`` read: the stored invariants and the row counts.

Each check is a query that returns rows only when its invariant is broken;
``chatd verify`` prints one line per row.
"""

from __future__ import annotations

from typing import Any

from chatd.db.bridge import Connection, Database
from chatd.models import Stats

_STATS = """
SELECT (SELECT count(*) FROM users WHERE id > 0) AS users,
       (SELECT count(*) FROM channels WHERE id > 0) AS channels,
       (SELECT count(*) FROM messages WHERE channel_id > 0) AS messages,
       (SELECT count(*) FROM inbox WHERE user_id > 0) AS inbox_events
"""
#: (Id 0 is the echo probe's system user and channel: counted apart, see migrations/0007_ops.sql.)
_TABLE_COUNT = """
SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""
#: The stored invariants; each query returns rows only when something is broken.
#: Id 0 (the system channel and user) is the exception to "seqs start at 1": the
#: retention job prunes the echo probe's old messages and the system user's
#: inbox events about them (chatd/db/retention.py); what is left is contiguous up to the head.
VERIFY_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "channel seq not contiguous",
        """
        SELECT c.id, c.last_seq, count(m.seq) AS n, coalesce(max(m.seq), 0) AS top, coalesce(min(m.seq), 1) AS low
        FROM channels c LEFT JOIN messages m ON m.channel_id = c.id
        GROUP BY c.id HAVING count(m.seq) <> c.last_seq - coalesce(min(m.seq), 1) + 1
            OR coalesce(max(m.seq), 0) <> c.last_seq OR (c.id <> 0 AND coalesce(min(m.seq), 1) <> 1)
        """,
    ),
    (
        "user inbox_seq not contiguous",
        """
        SELECT u.id, u.inbox_head, count(i.inbox_seq) AS n, coalesce(max(i.inbox_seq), 0) AS top
        FROM users u LEFT JOIN inbox i ON i.user_id = u.id
        GROUP BY u.id HAVING count(i.inbox_seq) <> u.inbox_head - coalesce(min(i.inbox_seq), 1) + 1
            OR coalesce(max(i.inbox_seq), 0) <> u.inbox_head OR (u.id <> 0 AND coalesce(min(i.inbox_seq), 1) <> 1)
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
        WHERE i.kind IN ('message', 'edit', 'delete', 'reaction') AND m.seq IS NULL LIMIT 10
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
    (
        "message media pointing to a missing message",
        """
        SELECT mm.channel_id, mm.seq, mm.media_id FROM message_media mm
        LEFT JOIN messages m ON m.channel_id = mm.channel_id AND m.seq = mm.seq
        WHERE m.seq IS NULL LIMIT 10
        """,
    ),
    (
        "posted media not marked posted (media gc could remove it)",
        """
        SELECT DISTINCT mm.media_id FROM message_media mm JOIN media m ON m.id = mm.media_id
        WHERE m.posted_at IS NULL LIMIT 10
        """,
    ),
    (
        "stored file whose chunks do not add up to its size",
        """
        SELECT b.encode_sha256, b.size, b.chunks, b.bytes, b.contiguous FROM (
            SELECT encode(b.sha256, 'hex') AS encode_sha256, b.size, b.chunk_count,
                   count(bc.idx) AS chunks, coalesce(sum(bc.size), 0) AS bytes,
                   bool_and(bc.start_byte = coalesce(
                       (SELECT sum(p.size) FROM media_blob_chunks p
                        WHERE p.blob_sha256 = b.sha256 AND p.idx < bc.idx), 0)) AS contiguous
            FROM media_blobs b LEFT JOIN media_blob_chunks bc ON bc.blob_sha256 = b.sha256
            GROUP BY b.sha256, b.size, b.chunk_count) b
        WHERE b.chunks <> b.chunk_count OR b.bytes <> b.size OR NOT coalesce(b.contiguous, true) LIMIT 10
        """,
    ),
    # PROTOCOL §10. A deleted message stays as a tombstone (so "channel seq not
    # contiguous" above covers "tombstones keep their seq"), with nothing left of it.
    (
        "deleted message still holds text, edit history, mentions, reactions or media",
        """
        SELECT m.channel_id, m.seq FROM messages m
        WHERE m.deleted_at IS NOT NULL AND (
            m.text <> ''
            OR EXISTS (SELECT 1 FROM message_edits e WHERE e.channel_id = m.channel_id AND e.seq = m.seq)
            OR EXISTS (SELECT 1 FROM mentions n WHERE n.channel_id = m.channel_id AND n.seq = m.seq)
            OR EXISTS (SELECT 1 FROM reactions r WHERE r.channel_id = m.channel_id AND r.seq = m.seq)
            OR EXISTS (SELECT 1 FROM message_media mm WHERE mm.channel_id = m.channel_id AND mm.seq = m.seq))
        LIMIT 10
        """,
    ),
    (
        "edit history not 0..n, or the text not its last version",
        """
        SELECT e.channel_id, e.seq, count(*) AS versions, max(e.version) AS last FROM message_edits e
        JOIN messages m ON m.channel_id = e.channel_id AND m.seq = e.seq
        GROUP BY e.channel_id, e.seq, m.text
        HAVING count(*) <> max(e.version) + 1 OR min(e.version) <> 0
            OR m.text <> (array_agg(e.text ORDER BY e.version DESC))[1]
        LIMIT 10
        """,
    ),
    (
        "edit history of a missing message",
        """
        SELECT e.channel_id, e.seq FROM message_edits e
        LEFT JOIN messages m ON m.channel_id = e.channel_id AND m.seq = e.seq WHERE m.seq IS NULL LIMIT 10
        """,
    ),
    (
        # Reaction counts are counted from these rows when read (never stored), so
        # they match by construction; what can go wrong is a row with no message.
        "reaction or mention of a missing message",
        """
        SELECT r.channel_id, r.seq FROM (SELECT channel_id, seq FROM reactions UNION SELECT channel_id, seq FROM mentions) r
        LEFT JOIN messages m ON m.channel_id = r.channel_id AND m.seq = r.seq WHERE m.seq IS NULL LIMIT 10
        """,
    ),
    (
        "reply not attached to an earlier root of its channel",
        """
        SELECT r.channel_id, r.seq, r.reply_to FROM messages r
        LEFT JOIN messages root ON root.channel_id = r.channel_id AND root.seq = r.reply_to
        WHERE r.reply_to IS NOT NULL AND (root.seq IS NULL OR root.reply_to IS NOT NULL OR r.reply_to >= r.seq)
        LIMIT 10
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

    async def table_count(self) -> int:
        """Tables outside PostgreSQL's own schemas: 0 for an empty database (restore's target)."""

        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_TABLE_COUNT))

        return await self.db.read(unit)

    async def server_version(self) -> str:
        """The server's ``version()`` line, for ``chatd stats``."""

        async def unit(conn: Connection) -> str:
            return str(await conn.fetchval("SELECT version()"))

        return await self.db.read(unit)

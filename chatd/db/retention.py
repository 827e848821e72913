"""Retention: old messages become tombstones, and the echo probe's old messages go away.

Each step is one short transaction over at most :data:`BATCH` messages of one
channel, walked by primary key from that channel's ``retention_cursor`` row
(migrations/0008_retention.sql says why no index): seqs are given in send
order, so the walk stops at the first message younger than the cutoff. A
message's ``created_at`` is its transaction's start, so a message may be a
few milliseconds older than the one before it; it is then simply taken by
the next pass.

A tombstone is written exactly as a deletion writes it (chatd/db/conversation.py):
text emptied, ``deleted_at`` set, edit history, mentions, reactions and media
links erased (an upload no other message carries is unposted, so
``chatd media gc`` frees it). ``deleted_by`` stays NULL: removed by retention,
not by a user. No inbox event is written (clients that cached the text keep
it until they read history again).

Several nodes run the job at once: the channel's cursor row is taken with
``FOR UPDATE SKIP LOCKED``, so a node that finds it taken leaves that channel
to the other. Lock order: the cursor row, then the batch's messages rows (as
a deletion: message row first, then media rows); never the channel or users
rows, so sends never wait for the job.

The system channel (id 0, migrations/0007_ops.sql) is pruned outright, not
tombstoned: its messages are the echo probe's ("echo", one per node every
5 s), so a tombstone would save nothing. Its old messages and the system
user's inbox events before them are deleted, always keeping the newest one;
``chatd verify`` lets id 0's seqs start above 1 (still contiguous up to the head).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from chatd.db.bridge import Connection, Database

#: Messages per transaction, at most.
BATCH = 500
#: Channels listed per statement while looking for work.
CHANNEL_PAGE = 1000
SYSTEM_CHANNEL = 0

_NOW_MINUS = "SELECT now() - make_interval(secs => $1)"
#: A page of channels by id, each with its cursor and whether the message after it is old.
_CHANNELS_DUE = """
SELECT c.id, EXISTS (
    SELECT 1 FROM messages m
    WHERE m.channel_id = c.id AND m.seq = coalesce(r.seq, 0) + 1 AND m.created_at < $2) AS due
FROM channels c LEFT JOIN retention_cursor r ON r.channel_id = c.id
WHERE c.id > $1 ORDER BY c.id LIMIT $3
"""
_ENSURE_CURSOR = "INSERT INTO retention_cursor (channel_id) VALUES ($1) ON CONFLICT DO NOTHING"
_TAKE_CURSOR = "SELECT seq FROM retention_cursor WHERE channel_id = $1 FOR UPDATE SKIP LOCKED"
_SET_CURSOR = "UPDATE retention_cursor SET seq = $2 WHERE channel_id = $1"
_NEXT = """
SELECT seq, created_at < $3 AS old FROM messages
WHERE channel_id = $1 AND seq > $2 ORDER BY seq LIMIT $4
"""
_LAST_SEQ = "SELECT last_seq FROM channels WHERE id = $1"
# The range (channel_id = $1 AND seq > $2 AND seq <= $3) is a prefix walk of each table's primary key.
_TOMBSTONE = """
UPDATE messages SET text = '', deleted_at = now(), deleted_by = NULL
WHERE channel_id = $1 AND seq > $2 AND seq <= $3 AND deleted_at IS NULL
"""
_ERASE_EDITS = "DELETE FROM message_edits WHERE channel_id = $1 AND seq > $2 AND seq <= $3"
_ERASE_MENTIONS = "DELETE FROM mentions WHERE channel_id = $1 AND seq > $2 AND seq <= $3"
_ERASE_REACTIONS = "DELETE FROM reactions WHERE channel_id = $1 AND seq > $2 AND seq <= $3"
#: As conversation._ERASE_MEDIA, for a range: the statement sees message_media as
#: before its DELETE, so the range's own links are left out of "another message carries it".
_ERASE_MEDIA = """
WITH gone AS (DELETE FROM message_media WHERE channel_id = $1 AND seq > $2 AND seq <= $3 RETURNING media_id)
UPDATE media SET posted_at = NULL
WHERE id IN (SELECT media_id FROM gone)
  AND NOT EXISTS (SELECT 1 FROM message_media mm WHERE mm.media_id = media.id
                  AND NOT (mm.channel_id = $1 AND mm.seq > $2 AND mm.seq <= $3))
"""
_DROP_SYSTEM_MESSAGES = "DELETE FROM messages WHERE channel_id = $1 AND seq > $2 AND seq <= $3"
#: The system user's inbox events up to the last one about a dropped message (a
#: prefix, so the rest stays contiguous), never its newest.
_DROP_SYSTEM_INBOX = """
DELETE FROM inbox WHERE user_id = 0 AND inbox_seq < (SELECT inbox_head FROM users WHERE id = 0)
  AND inbox_seq <= (SELECT max(inbox_seq) FROM inbox WHERE user_id = 0 AND channel_id = $1 AND seq <= $2)
"""


@attrs.frozen
class Step:
    """One transaction's work on one channel."""

    #: Messages walked past (tombstoned, already tombstones, or pruned).
    walked: int
    #: Messages that became tombstones (or were pruned, in the system channel).
    removed: int
    #: True when the batch was full of old messages: there may be more.
    more: bool


class RetentionStore:
    def __init__(self, db: Database, batch: int = BATCH) -> None:
        self.db = db
        self.batch = batch

    async def cutoff(self, age_s: float) -> datetime:
        """The database's ``now()`` minus ``age_s``: one clock for every node."""

        async def unit(conn: Connection) -> datetime:
            return await conn.fetchval(_NOW_MINUS, float(age_s))  # type: ignore[no-any-return]

        return await self.db.read(unit)

    async def channels_due(self, after: int, cutoff: datetime) -> tuple[list[int], int | None]:
        """The channels after ``after`` (by id, one page) whose next message is
        older than ``cutoff``, and the page's last id (None: no channels left)."""

        async def unit(conn: Connection) -> tuple[list[int], int | None]:
            rows = await conn.fetch(_CHANNELS_DUE, after, cutoff, CHANNEL_PAGE)
            return [r["id"] for r in rows if r["due"]], (rows[-1]["id"] if rows else None)

        return await self.db.read(unit)

    async def tombstone_batch(self, channel_id: int, cutoff: datetime) -> Step | None:
        """Tombstone the channel's next batch of messages older than ``cutoff``;
        None when another node holds the channel."""
        return await self.db.transaction(lambda conn: self._batch(conn, channel_id, cutoff, prune=False))

    async def prune_system_batch(self, cutoff: datetime) -> Step | None:
        """Delete the system channel's next batch of messages older than ``cutoff``
        and the system user's inbox events about them; None when another node is at it."""
        return await self.db.transaction(lambda conn: self._batch(conn, SYSTEM_CHANNEL, cutoff, prune=True))

    async def _batch(self, conn: Connection, channel_id: int, cutoff: datetime, *, prune: bool) -> Step | None:
        await conn.execute(_ENSURE_CURSOR, channel_id)
        done = await conn.fetchval(_TAKE_CURSOR, channel_id)
        if done is None:
            return None
        rows = await conn.fetch(_NEXT, channel_id, done, cutoff, self.batch)
        keep_from = await conn.fetchval(_LAST_SEQ, channel_id) if prune else None
        hi = done
        for row in rows:
            if not row["old"] or (keep_from is not None and row["seq"] >= keep_from):
                break
            hi = row["seq"]
        if hi == done:
            return Step(0, 0, more=False)
        if prune:
            removed = _count(await conn.execute(_DROP_SYSTEM_MESSAGES, channel_id, done, hi))
            await conn.execute(_DROP_SYSTEM_INBOX, channel_id, hi)
        else:
            removed = _count(await conn.execute(_TOMBSTONE, channel_id, done, hi))
            for statement in (_ERASE_EDITS, _ERASE_MENTIONS, _ERASE_REACTIONS, _ERASE_MEDIA):
                await conn.execute(statement, channel_id, done, hi)
        await conn.execute(_SET_CURSOR, channel_id, hi)
        return Step(hi - done, removed, more=len(rows) == self.batch and rows[-1]["seq"] == hi)


def _count(status: str) -> int:
    """The row count of an ``UPDATE n`` / ``DELETE n`` status line."""
    return int(status.rsplit(" ", 1)[-1])

"""Receipt watermarks: committing a batch of receipts, and reading a channel's watermarks.

A batch is one call of the SQL function ``chatd_receipt_batch``
(migrations/0004_receipts_presence.sql): every receipt of it commits in one
transaction and one round trip, forward-only and clamped to ``last_seq`` in
SQL, with the inbox ``receipt`` events of small channels and one NOTIFY.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from chatd.db import records
from chatd.db.bridge import Connection, Database
from chatd.db.messages import BatchFailed
from chatd.db.records import IS_MEMBER
from chatd.errors import NotMember
from chatd.models import InboxAdvance, ReceiptChange, ReceiptCounts, ReceiptRequest, Watermarks

_RECEIPT_BATCH = """
SELECT status, seq, large, user_ids, inbox_seqs
FROM chatd_receipt_batch($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], $5)
"""
_COUNTS = "SELECT delivered, read FROM chatd_receipt_counts($1, $2)"
_WATERMARKS = "SELECT user_id, delivered_seq, read_seq FROM members WHERE channel_id = $1 ORDER BY user_id"
_MEMBER_FACTS = """
SELECT c.member_count FROM members m JOIN channels c ON c.id = m.channel_id
WHERE m.channel_id = $1 AND m.user_id = $2
"""

#: One answer per receipt of a batch: the change, None (nothing moved), or NotMember.
ReceiptResult = ReceiptChange | None | NotMember


class ReceiptStore:
    """The watermark columns of ``members``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def commit_batch(self, requests: Sequence[ReceiptRequest], fanout_max_members: int) -> list[ReceiptResult]:
        """Commit many receipts in one transaction; one answer per request, in order.

        Raises Unavailable when the database cannot be reached, BatchFailed when
        it refused the batch as a whole (nothing stored).
        """

        async def unit(conn: Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    _RECEIPT_BATCH,
                    [r.user_id for r in requests],
                    [r.channel_id for r in requests],
                    [r.seq for r in requests],
                    [r.state == "read" for r in requests],
                    fanout_max_members,
                )
            )

        try:
            found = await self.db.transaction(unit)
        except asyncpg.PostgresError as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        return [_result(rec, req) for rec, req in zip(found, requests)]

    async def watermarks(self, channel_id: int, user_id: int, seq: int) -> ReceiptCounts:
        """For a member: how many members delivered/read at least ``seq``, and everyone's watermarks."""

        async def unit(conn: Connection) -> tuple[Any, list[Any]]:
            if await conn.fetchval(IS_MEMBER, channel_id, user_id) is None:
                raise NotMember("not a member of this channel")
            return await conn.fetchrow(_COUNTS, channel_id, seq), list(await conn.fetch(_WATERMARKS, channel_id))

        counts, rows = await self.db.read(unit)
        return ReceiptCounts(
            seq=seq,
            delivered=counts["delivered"],
            read=counts["read"],
            members=tuple(Watermarks(r["user_id"], r["delivered_seq"], r["read_seq"]) for r in rows),
        )

    async def member_count(self, channel_id: int, user_id: int) -> int | None:
        """The channel's member count when ``user_id`` is a member, else None."""

        async def unit(conn: Connection) -> int | None:
            return await conn.fetchval(_MEMBER_FACTS, channel_id, user_id)  # type: ignore[no-any-return]

        return await self.db.read(unit)


def _result(record: Any, request: ReceiptRequest) -> ReceiptResult:
    if record["status"] == "not_member":
        return NotMember("not a member of this channel")
    if record["status"] != "changed":
        return None
    advances: tuple[InboxAdvance, ...] = records.advances(record["user_ids"], record["inbox_seqs"])
    return ReceiptChange(
        channel_id=request.channel_id,
        user_id=request.user_id,
        state=request.state,
        seq=record["seq"],
        large=bool(record["large"]),
        advances=advances,
    )

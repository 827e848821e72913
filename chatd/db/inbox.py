"""Each user's inbox: the ordered events (``inbox_seq``) a client syncs from a cursor.

Rows are appended only by the SQL functions (``chatd_send``,
``chatd_append_inbox``, see :mod:`chatd.db.records`); this module reads them.
"""

from __future__ import annotations

from typing import Any

from chatd.db import records
from chatd.db.bridge import Connection, Database
from chatd.models import InboxEvent

_INBOX_AFTER = """
SELECT inbox_seq, kind, channel_id, seq, data FROM inbox
WHERE user_id = $1 AND inbox_seq > $2 ORDER BY inbox_seq LIMIT $3
"""
_MESSAGES_BY_KEY = """
SELECT m.channel_id, m.seq, m.sender_id, m.client_msg_id, m.text, m.created_at
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN messages m ON m.channel_id = k.channel_id AND m.seq = k.seq
"""
#: Several users' pages in one statement (``k.i``: the request's position in the batch).
_INBOX_AFTER_MANY = """
SELECT k.i, r.inbox_seq, r.kind, r.channel_id, r.seq, r.data
FROM unnest($1::bigint[], $2::bigint[], $3::int[]) WITH ORDINALITY AS k (user_id, after, lim, i)
CROSS JOIN LATERAL (
    SELECT inbox_seq, kind, channel_id, seq, data FROM inbox
    WHERE inbox.user_id = k.user_id AND inbox.inbox_seq > k.after ORDER BY inbox.inbox_seq LIMIT k.lim
) AS r
ORDER BY k.i, r.inbox_seq
"""
_INBOX_HEAD = "SELECT inbox_head FROM users WHERE id = $1"


class InboxStore:
    """The ``inbox`` table (and each user's ``inbox_head``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def read(self, user_id: int, after: int, limit: int) -> list[InboxEvent]:
        """The user's inbox events with inbox_seq > after, oldest first, at most ``limit``.

        Two statements in one unit: the inbox rows (keyed by user), then the
        messages they point to (keyed by channel), with no join across the two
        keys, so each table can be sharded on its own.
        """

        async def unit(conn: Connection) -> tuple[list[Any], list[Any]]:
            rows = list(await conn.fetch(_INBOX_AFTER, user_id, after, limit))
            refs = [(r["channel_id"], r["seq"]) for r in rows if r["kind"] == "message"]
            messages: list[Any] = []
            if refs:
                messages = list(await conn.fetch(_MESSAGES_BY_KEY, [c for c, _ in refs], [s for _, s in refs]))
            return rows, messages

        rows, message_rows = await self.db.read(unit)
        by_key = {(m["channel_id"], m["seq"]): records.message(m) for m in message_rows}
        events = []
        for row in rows:
            if row["kind"] == "message":
                fields = by_key[(row["channel_id"], row["seq"])].to_json()
            else:
                fields = dict(row["data"] or {})
            events.append(InboxEvent(row["inbox_seq"], row["kind"], fields))
        return events

    async def read_many(self, requests: list[tuple[int, int, int]]) -> list[list[InboxEvent]]:
        """:meth:`read` for several ``(user_id, after, limit)`` at once, in one unit of two statements.

        A reconnect storm has many users behind on the same messages (a group's):
        each message row is read once for all of them, and its fields are one
        dict shared by their events (``InboxEvent.shared``), so the codec encodes
        its body once.
        """

        async def unit(conn: Connection) -> tuple[list[Any], list[Any]]:
            rows = list(await conn.fetch(_INBOX_AFTER_MANY, [r[0] for r in requests], [r[1] for r in requests],
                                         [r[2] for r in requests]))
            refs = sorted({(r["channel_id"], r["seq"]) for r in rows if r["kind"] == "message"})
            messages: list[Any] = []
            if refs:
                messages = list(await conn.fetch(_MESSAGES_BY_KEY, [c for c, _ in refs], [s for _, s in refs]))
            return rows, messages

        rows, message_rows = await self.db.read(unit)
        fields_by_key = {(m["channel_id"], m["seq"]): records.message(m).to_json() for m in message_rows}
        out: list[list[InboxEvent]] = [[] for _ in requests]
        for row in rows:
            if row["kind"] == "message":
                event = InboxEvent(row["inbox_seq"], row["kind"], fields_by_key[(row["channel_id"], row["seq"])],
                                   shared=True)
            else:
                event = InboxEvent(row["inbox_seq"], row["kind"], dict(row["data"] or {}))
            out[row["i"] - 1].append(event)
        return out

    async def head(self, user_id: int) -> int:
        """The user's newest ``inbox_seq`` (0 for an empty inbox)."""

        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_INBOX_HEAD, user_id) or 0)

        return await self.db.read(unit)

"""Each user's inbox: the ordered events (``inbox_seq``) a client syncs from a cursor.

Rows are appended only by the SQL functions (``chatd_send``,
``chatd_append_inbox``, see :mod:`chatd.db.records`); this module reads them.
``message`` and ``edit`` events are rendered from the message's current state
(a deleted message's events show its tombstone, never its erased text).
"""

from __future__ import annotations

from typing import Any

from chatd.db.bridge import Connection, Database
from chatd.db.message_state import with_state
from chatd.db.records import MESSAGE_COLUMNS
from chatd.models import InboxEvent, Message

_INBOX_AFTER = """
SELECT inbox_seq, kind, channel_id, seq, data FROM inbox
WHERE user_id = $1 AND inbox_seq > $2 ORDER BY inbox_seq LIMIT $3
"""
_MESSAGES_BY_KEY = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE (channel_id, seq) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
"""
#: Events rendered from the message's current state (the others carry their data).
_FROM_MESSAGE = ("message", "edit")
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

        async def unit(conn: Connection) -> tuple[list[Any], list[Message]]:
            rows = list(await conn.fetch(_INBOX_AFTER, user_id, after, limit))
            refs = {(r["channel_id"], r["seq"]) for r in rows if r["kind"] in _FROM_MESSAGE}
            messages: list[Message] = []
            if refs:
                found = await conn.fetch(_MESSAGES_BY_KEY, [c for c, _ in refs], [s for _, s in refs])
                messages = await with_state(conn, found, user_id)
            return rows, messages

        rows, messages = await self.db.read(unit)
        by_key = {(m.channel_id, m.seq): m for m in messages}
        events = []
        for row in rows:
            if row["kind"] == "message":
                fields = by_key[(row["channel_id"], row["seq"])].to_json()
            elif row["kind"] == "edit":
                fields = by_key[(row["channel_id"], row["seq"])].edit_json()
            else:
                fields = dict(row["data"] or {})
            events.append(InboxEvent(row["inbox_seq"], row["kind"], fields))
        return events

    async def head(self, user_id: int) -> int:
        """The user's newest ``inbox_seq`` (0 for an empty inbox)."""

        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_INBOX_HEAD, user_id) or 0)

        return await self.db.read(unit)

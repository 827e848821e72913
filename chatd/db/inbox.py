"""Each user's inbox: the ordered events (``inbox_seq``) a client syncs from a cursor.

Rows are appended only by the SQL functions (``chatd_send``,
``chatd_append_inbox``, see :mod:`chatd.db.records`); this module reads them.
``message`` and ``edit`` events are rendered from the message's current state
(a deleted message's events show its tombstone, never its erased text).
"""

from __future__ import annotations

from typing import Any

import attrs

from chatd.db.bridge import Connection, Database
from chatd.db.message_state import with_state
from chatd.db.records import MESSAGE_COLUMNS
from chatd.models import InboxEvent, Message

_MESSAGES_BY_KEY = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE (channel_id, seq) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
"""
#: Events rendered from the message's current state (the others carry their data).
_FROM_MESSAGE = ("message", "edit")
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
#: Which of these readers reacted to which of these messages (``me`` in a shared page).
_REACTIONS_OF = """
SELECT r.user_id, r.channel_id, r.seq, r.emoji
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN reactions r ON r.channel_id = k.channel_id AND r.seq = k.seq AND r.user_id = ANY($3::bigint[])
"""
_INBOX_HEAD = "SELECT inbox_head FROM users WHERE id = $1"


class InboxStore:
    """The ``inbox`` table (and each user's ``inbox_head``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def read(self, user_id: int, after: int, limit: int) -> list[InboxEvent]:
        """The user's inbox events with inbox_seq > after, oldest first, at most ``limit``:
        :meth:`read_many` for one reader (one rendering of events for both)."""
        (events,) = await self.read_many([(user_id, after, limit)])
        return events

    async def read_many(self, requests: list[tuple[int, int, int]]) -> list[list[InboxEvent]]:
        """Each ``(user_id, after, limit)``'s inbox events with inbox_seq > after, oldest
        first, at most ``limit``, in one unit of two statements (three when some of the
        messages have reactions): the inbox rows (keyed by user), then the messages they
        point to (keyed by channel), with no join across the two keys, so each table
        can be sharded on its own.

        A reconnect storm has many users behind on the same messages (a group's):
        each message row is read once for all of them, and its fields are one
        dict shared by their events (``InboxEvent.shared``), so the codec encodes
        its body once.
        """

        async def unit(conn: Connection) -> tuple[list[Any], list[Message], set[tuple[int, int, int, str]]]:
            rows = list(await conn.fetch(_INBOX_AFTER_MANY, [r[0] for r in requests], [r[1] for r in requests],
                                         [r[2] for r in requests]))
            refs = sorted({(r["channel_id"], r["seq"]) for r in rows if r["kind"] in _FROM_MESSAGE})
            messages: list[Message] = []
            mine: set[tuple[int, int, int, str]] = set()
            if refs:
                found = await conn.fetch(_MESSAGES_BY_KEY, [c for c, _ in refs], [s for _, s in refs])
                messages = await with_state(conn, found, None)
                reacted = [(m.channel_id, m.seq) for m in messages if m.reactions]
                if reacted:
                    users = sorted({r[0] for r in requests})
                    mine = {(r["user_id"], r["channel_id"], r["seq"], r["emoji"]) for r in await conn.fetch(
                        _REACTIONS_OF, [c for c, _ in reacted], [s for _, s in reacted], users)}
            return rows, messages, mine

        rows, messages, mine = await self.db.read(unit)
        by_key = {(m.channel_id, m.seq): m for m in messages}
        shared = {key: m.to_json() for key, m in by_key.items()}
        out: list[list[InboxEvent]] = [[] for _ in requests]
        for row in rows:
            i = row["i"] - 1
            key = (row["channel_id"], row["seq"])
            if row["kind"] == "message":
                message = by_key[key]
                user_id = requests[i][0]
                if any((user_id, *key, r.emoji) in mine for r in message.reactions):
                    # This reader reacted: its own copy, with ``me`` set (the others share one body).
                    own = [attrs.evolve(r, me=(user_id, *key, r.emoji) in mine) for r in message.reactions]
                    event = InboxEvent(row["inbox_seq"], "message", attrs.evolve(message, reactions=tuple(own)).to_json())
                else:
                    event = InboxEvent(row["inbox_seq"], "message", shared[key], shared=True)
            elif row["kind"] == "edit":
                event = InboxEvent(row["inbox_seq"], "edit", by_key[key].edit_json())
            else:
                event = InboxEvent(row["inbox_seq"], row["kind"], dict(row["data"] or {}))
            out[i].append(event)
        return out

    async def head(self, user_id: int) -> int:
        """The user's newest ``inbox_seq`` (0 for an empty inbox)."""

        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_INBOX_HEAD, user_id) or 0)

        return await self.db.read(unit)

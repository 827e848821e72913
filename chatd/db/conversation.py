"""Changes to sent messages (edit, delete, react) and the reads across channels (search, mentions).

Each change is one transaction: it locks the message's row (FOR UPDATE to
edit or delete, FOR SHARE to react, so reactors never wait for each other),
writes the change, then appends one inbox event per member with
``chatd_append_inbox`` (users' rows by id), or, in a large channel, sends the
``x:`` hint that makes every node push a live frame. It never locks the
channel row: see the lock order in migrations/0006_conversation.sql.

The rules (who may edit or delete) are the services'; the store hands them
the locked facts (:class:`MessageFacts`) and writes only if they pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from chatd.db import records
from chatd.db.bridge import Connection, Database
from chatd.db.message_state import with_state
from chatd.db.records import IS_MEMBER, MESSAGE_COLUMNS
from chatd.errors import NotFound, NotMember
from chatd.models import InboxAdvance, Message

_FACTS = """
SELECT m.sender_id, m.deleted_at IS NOT NULL AS deleted, m.text, m.created_at,
       c.created_by, c.member_count
FROM messages m JOIN channels c ON c.id = m.channel_id
WHERE m.channel_id = $1 AND m.seq = $2
"""
_LOCK_FOR_UPDATE = _FACTS + " FOR UPDATE OF m"
_LOCK_FOR_SHARE = _FACTS + " FOR SHARE OF m"
_CHANNEL_EXISTS = "SELECT 1 FROM channels WHERE id = $1"
_LAST_VERSION = "SELECT max(version) FROM message_edits WHERE channel_id = $1 AND seq = $2"
_APPEND_VERSION = """
INSERT INTO message_edits (channel_id, seq, version, text, edited_by, edited_at) VALUES ($1, $2, $3, $4, $5, $6)
"""
_SET_TEXT = "UPDATE messages SET text = $3, edited_at = $4 WHERE channel_id = $1 AND seq = $2"
_NOW = "SELECT now()"
_DROP_MENTIONS = "DELETE FROM mentions WHERE channel_id = $1 AND seq = $2"
_RESOLVE_MENTIONS = """
INSERT INTO mentions (channel_id, seq, user_id)
SELECT $1, $2, unnest(chatd_resolve_mentions($1, $3, $4))
"""
_TOMBSTONE = """
UPDATE messages SET text = '', deleted_at = now(), deleted_by = $3 WHERE channel_id = $1 AND seq = $2
"""
_ERASE_EDITS = "DELETE FROM message_edits WHERE channel_id = $1 AND seq = $2"
_ERASE_REACTIONS = "DELETE FROM reactions WHERE channel_id = $1 AND seq = $2"
#: The message's media links; an upload no other message carries is unposted
#: again, so ``chatd media gc`` frees its bytes (its uploader may still fetch it until then).
_ERASE_MEDIA = """
WITH gone AS (DELETE FROM message_media WHERE channel_id = $1 AND seq = $2 RETURNING media_id)
UPDATE media SET posted_at = NULL
WHERE id IN (SELECT media_id FROM gone)
  AND NOT EXISTS (SELECT 1 FROM message_media mm WHERE mm.media_id = media.id
                  AND (mm.channel_id, mm.seq) <> ($1, $2))
"""
_ADD_REACTION = """
INSERT INTO reactions (channel_id, seq, emoji, user_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING 1
"""
_REMOVE_REACTION = "DELETE FROM reactions WHERE channel_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4 RETURNING 1"
_APPEND_INBOX = """
SELECT user_ids, inbox_seqs FROM chatd_append_inbox(chatd_recipients($1), $2, $1, $3, $4::jsonb)
"""
_NOTIFY_CHANGE = "SELECT chatd_notify_change($1, $2, $3)"

_COLUMNS_OF_M = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
#: Search: the caller's channels are a condition of the query itself, never a
#: filter afterwards. Each of the caller's channels is searched on its own,
#: newest first (LATERAL ... ORDER BY seq DESC LIMIT), so the planner picks per
#: query: for a common word, walking the channel's newest messages and
#: stopping at ``limit`` hits; for a rare one, the GIN index (see _CUSTOM_PLAN). Then the
#: channels' hits are merged newest first; ``ts_headline`` runs on those only.
_SEARCH = f"""
SELECT {_COLUMNS_OF_M},
       ts_headline('simple', m.text, q, 'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=20, MinWords=5')
           AS highlight
FROM websearch_to_tsquery('simple', $2) AS q,
     LATERAL (SELECT mb.channel_id FROM members mb
              WHERE mb.user_id = $1 AND ($3::bigint IS NULL OR mb.channel_id = $3)) AS mine,
     LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE channel_id = mine.channel_id AND search @@ q AND ($4::bigint IS NULL OR seq < $4)
              ORDER BY seq DESC LIMIT $5) AS m
ORDER BY m.created_at DESC, m.channel_id DESC, m.seq DESC
LIMIT $5
"""
#: The search statement is prepared once per connection; a generic plan cannot
#: know whether the words are rare (use the GIN index) or common (walk the
#: newest messages), so each search is planned for its own words.
_CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"
#: Mentions of the caller in the channels it is still a member of, newest mention first.
_MENTIONS_OF = f"""
SELECT {_COLUMNS_OF_M}, mn.id AS mention_id
FROM mentions mn
JOIN members mb ON mb.channel_id = mn.channel_id AND mb.user_id = mn.user_id
JOIN messages m ON m.channel_id = mn.channel_id AND m.seq = mn.seq
WHERE mn.user_id = $1 AND mn.id < $2
ORDER BY mn.id DESC
LIMIT $3
"""


@attrs.frozen
class MessageFacts:
    """A message's row as a change sees it, locked: what the services' rules decide on."""

    channel_id: int
    seq: int
    sender_id: int
    deleted: bool
    channel_creator: int | None


@attrs.frozen
class Change:
    """What a committed change wrote: the members' inbox advances, or (large channel) none."""

    advances: tuple[InboxAdvance, ...]
    #: False when nothing changed (an idempotent repeat): no event was written.
    changed: bool = True


Rule = Callable[[MessageFacts], None]


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def edit(
        self, channel_id: int, seq: int, by: int, text: str, rule: Rule, event: Mapping[str, Any], inbox_max: int
    ) -> tuple[Message, Change]:
        """Append the new version of the text, re-resolve mentions (the search
        vector follows the text by itself), write the ``edit`` events."""

        async def unit(conn: Connection) -> tuple[Message, Change]:
            facts = await _locked(conn, channel_id, seq, by, _LOCK_FOR_UPDATE, admin=False)
            rule(_facts(channel_id, seq, facts))
            now: datetime = await conn.fetchval(_NOW)
            last = await conn.fetchval(_LAST_VERSION, channel_id, seq)
            if last is None:
                # The first edit keeps the text as sent as version 0.
                await conn.execute(_APPEND_VERSION, channel_id, seq, 0, facts["text"], facts["sender_id"],
                                   facts["created_at"])
                last = 0
            await conn.execute(_APPEND_VERSION, channel_id, seq, last + 1, text, by, now)
            await conn.execute(_SET_TEXT, channel_id, seq, text, now)
            await conn.execute(_DROP_MENTIONS, channel_id, seq)
            if "@" in text:
                await conn.execute(_RESOLVE_MENTIONS, channel_id, seq, text, inbox_max)
            change = await _announce(conn, channel_id, seq, facts["member_count"], inbox_max, "edit", event, "edit")
            record = await conn.fetchrow(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = $1 AND seq = $2",
                                         channel_id, seq)
            return (await with_state(conn, [record], by))[0], change

        return await self.db.transaction(unit)

    async def delete(
        self, channel_id: int, seq: int, by: int, by_admin: bool, rule: Rule, event: Mapping[str, Any], inbox_max: int
    ) -> Change:
        """Leave a tombstone: the text, its edit history, mentions and reactions
        and media links erased (the search vector empties with the text); the ``delete`` events.
        Deleting a tombstone again writes nothing."""

        async def unit(conn: Connection) -> Change:
            facts = await _locked(conn, channel_id, seq, by, _LOCK_FOR_UPDATE, admin=by_admin)
            rule(_facts(channel_id, seq, facts))
            if facts["deleted"]:
                return Change((), changed=False)
            await conn.execute(_TOMBSTONE, channel_id, seq, by)
            await conn.execute(_ERASE_EDITS, channel_id, seq)
            await conn.execute(_DROP_MENTIONS, channel_id, seq)
            await conn.execute(_ERASE_REACTIONS, channel_id, seq)
            await conn.execute(_ERASE_MEDIA, channel_id, seq)
            return await _announce(conn, channel_id, seq, facts["member_count"], inbox_max, "delete", event,
                                   f"delete:{by}")

        return await self.db.transaction(unit)

    async def react(
        self, channel_id: int, seq: int, user_id: int, emoji: str, add: bool, event: Mapping[str, Any], inbox_max: int
    ) -> Change:
        """Add or remove one reaction; a repeat changes nothing and writes no event."""

        async def unit(conn: Connection) -> Change:
            facts = await _locked(conn, channel_id, seq, user_id, _LOCK_FOR_SHARE, admin=False)
            if facts["deleted"]:
                raise NotFound("no such message")
            statement = _ADD_REACTION if add else _REMOVE_REACTION
            if await conn.fetchval(statement, channel_id, seq, emoji, user_id) is None:
                return Change((), changed=False)
            detail = f"reaction:{user_id}:{'added' if add else 'removed'}:{emoji}"
            return await _announce(conn, channel_id, seq, facts["member_count"], inbox_max, "reaction", event, detail)

        return await self.db.transaction(unit)

    async def search(
        self, user_id: int, query: str, channel_id: int | None, before: int | None, limit: int
    ) -> list[Message]:
        async def unit(conn: Connection) -> list[Message]:
            await conn.execute(_CUSTOM_PLAN)
            rows = await conn.fetch(_SEARCH, user_id, query, channel_id, before, limit)
            found = await with_state(conn, rows, user_id)
            return [attrs.evolve(m, highlight=r["highlight"]) for m, r in zip(found, rows)]

        # A transaction only so that SET LOCAL applies (it writes nothing).
        return await self.db.transaction(unit)

    async def mentions_of(self, user_id: int, before: int | None, limit: int) -> list[tuple[int, Message]]:
        """(mention_id, message) pairs, newest mention first."""

        async def unit(conn: Connection) -> list[tuple[int, Message]]:
            rows = await conn.fetch(_MENTIONS_OF, user_id, before if before is not None else 2**63 - 1, limit)
            found = await with_state(conn, rows, user_id)
            return [(r["mention_id"], m) for m, r in zip(found, rows)]

        return await self.db.read(unit)


async def _locked(conn: Connection, channel_id: int, seq: int, by: int, statement: str, *, admin: bool) -> Any:
    """The message's row, locked; NotMember for a non-member (an admin only
    needs the channel to exist), NotFound for a message that does not exist."""
    if admin:
        if await conn.fetchval(_CHANNEL_EXISTS, channel_id) is None:
            raise NotFound("no such channel")
    elif await conn.fetchval(IS_MEMBER, channel_id, by) is None:
        raise NotMember("not a member of this channel")
    facts = await conn.fetchrow(statement, channel_id, seq)
    if facts is None:
        raise NotFound("no such message")
    return facts


def _facts(channel_id: int, seq: int, row: Any) -> MessageFacts:
    return MessageFacts(channel_id, seq, row["sender_id"], row["deleted"], row["created_by"])


async def _announce(
    conn: Connection, channel_id: int, seq: int, members: int, inbox_max: int, kind: str,
    event: Mapping[str, Any], detail: str,
) -> Change:
    """One ``kind`` event per member, or the live hint in a large channel."""
    if members > inbox_max:
        await conn.execute(_NOTIFY_CHANGE, channel_id, seq, detail)
        return Change(())
    row = await conn.fetchrow(_APPEND_INBOX, channel_id, kind, seq, dict(event))
    assert row is not None  # a function call always returns its row
    return Change(records.advances(row["user_ids"], row["inbox_seqs"]))

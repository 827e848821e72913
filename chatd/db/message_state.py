"""A message's current state as a reader sees it: the row plus its media, mentions and reactions.

Every read that answers message objects (history, threads, the inbox's
``message`` events, search, mentions, live frames) goes through
:func:`with_state`, so the added fields of PROTOCOL §10 are filled the same
way everywhere: four statements per page, keyed by (channel_id, seq), whatever
the page's size. Reaction counts are counted from their rows here (they are
never stored: see migrations/0006_conversation.sql).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from chatd.db import media, records
from chatd.db.bridge import Connection
from chatd.models import Message, Reaction

_MENTIONS = """
SELECT mn.channel_id, mn.seq, array_agg(mn.user_id ORDER BY mn.user_id) AS users
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN mentions mn ON mn.channel_id = k.channel_id AND mn.seq = k.seq
GROUP BY mn.channel_id, mn.seq
"""
#: Emojis in the order they were first used on the message.
_REACTIONS = """
SELECT r.channel_id, r.seq, r.emoji, count(*) AS n, bool_or(r.user_id = $3) AS me, min(r.created_at) AS first
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN reactions r ON r.channel_id = k.channel_id AND r.seq = k.seq
GROUP BY r.channel_id, r.seq, r.emoji
ORDER BY first, r.emoji
"""
_REPLY_COUNTS = """
SELECT m.channel_id, m.reply_to, count(*) AS n
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN messages m ON m.channel_id = k.channel_id AND m.reply_to = k.seq
GROUP BY m.channel_id, m.reply_to
"""


async def with_state(conn: Connection, rows: Sequence[Any], viewer: int | None) -> list[Message]:
    """``rows`` (selected with MESSAGE_COLUMNS) as messages with media, mentions,
    reactions and reply counts; ``me`` is true for the reactions of ``viewer`` (None: nobody)."""
    messages = [records.message(r) for r in rows]
    if not messages:
        return messages
    channels = [m.channel_id for m in messages]
    seqs = [m.seq for m in messages]
    mentions = {(r["channel_id"], r["seq"]): tuple(r["users"]) for r in await conn.fetch(_MENTIONS, channels, seqs)}
    replies = {(r["channel_id"], r["reply_to"]): r["n"] for r in await conn.fetch(_REPLY_COUNTS, channels, seqs)}
    attached = await media.message_media(conn, zip(channels, seqs))
    reactions: dict[tuple[int, int], list[Reaction]] = defaultdict(list)
    for r in await conn.fetch(_REACTIONS, channels, seqs, viewer or 0):
        reactions[(r["channel_id"], r["seq"])].append(Reaction(r["emoji"], r["n"], bool(r["me"])))
    return [
        attrs.evolve(
            m,
            media=attached.get((m.channel_id, m.seq), ()),
            mentions=mentions.get((m.channel_id, m.seq), ()),
            reactions=tuple(reactions.get((m.channel_id, m.seq), ())),
            reply_count=replies.get((m.channel_id, m.seq), 0),
        )
        for m in messages
    ]

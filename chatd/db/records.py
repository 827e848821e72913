"""Records to models, and the statements several aggregates share.

asyncpg records never leave :mod:`chatd.db`: each store module turns them
into the value classes of :mod:`chatd.models` with these named constructors
(never ``Cls(**row)``), so one column rename is one edit here.

Who receives a channel's events is decided in one place, the SQL function
``chatd_recipients`` (migrations/0001_init.sql); inbox rows are appended only
by ``chatd_append_inbox``, which locks the users' counter rows in id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from chatd.db.bridge import Connection
from chatd.errors import NotFound
from chatd.models import Channel, InboxAdvance, MediaRef, Message, User

IS_MEMBER = "SELECT 1 FROM members WHERE channel_id = $1 AND user_id = $2"
LOCK_USERS = "SELECT chatd_lock_users($1::bigint[])"
RECIPIENTS = "SELECT chatd_recipients($1)"
_APPEND_INBOX = "SELECT user_ids, inbox_seqs FROM chatd_append_inbox($1::bigint[], $2, $3, $4, $5::jsonb)"
_EXISTING_USERS = "SELECT id FROM users WHERE id = ANY($1::bigint[]) AND NOT disabled"

#: The columns :func:`message` reads.
MESSAGE_COLUMNS = (
    "channel_id, seq, sender_id, client_msg_id, text, created_at, reply_to, edited_at, deleted_at"
)


def user(record: Any) -> User:
    return User(
        user_id=record["id"],
        username=record["username"],
        display_name=record["display_name"],
        is_admin=record["is_admin"],
        disabled=record["disabled"],
    )


def channel(record: Any, members: Sequence[int] | None = None) -> Channel:
    return Channel(
        channel_id=record["id"],
        kind=record["kind"],
        name=record["name"],
        member_count=record["member_count"],
        last_seq=record["last_seq"],
        read_seq=record["read_seq"],
        members=tuple(members) if members is not None else None,
    )


def message(record: Any) -> Message:
    return Message(
        channel_id=record["channel_id"],
        seq=record["seq"],
        sender_id=record["sender_id"],
        client_msg_id=record["client_msg_id"],
        text=record["text"],
        created_at=record["created_at"],
        reply_to=record["reply_to"],
        edited_at=record["edited_at"],
        deleted=record["deleted_at"] is not None,
    )


def with_media(message: Message, attached: Mapping[tuple[int, int], tuple[MediaRef, ...]]) -> Message:
    """The message with its media, when it has any (``attached`` by (channel_id, seq))."""
    found = attached.get((message.channel_id, message.seq))
    return message if not found else attrs.evolve(message, media=found)


def advances(user_ids: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[InboxAdvance, ...]:
    return tuple(InboxAdvance(u, h) for u, h in zip(user_ids or (), heads or ()))


async def append_inbox(
    conn: Connection, users: Sequence[int], kind: str, channel_id: int, data: Mapping[str, Any]
) -> tuple[InboxAdvance, ...]:
    """Append one non-message event to each user's inbox (the channel row is already locked)."""
    if not users:
        return ()
    row = await conn.fetchrow(_APPEND_INBOX, list(users), kind, channel_id, None, dict(data))
    assert row is not None  # a function call always returns its row
    return advances(row["user_ids"], row["inbox_seqs"])


async def require_users(conn: Connection, user_ids: Sequence[int]) -> None:
    """NotFound naming the lowest id that is not an enabled user."""
    found = {r["id"] for r in await conn.fetch(_EXISTING_USERS, list(user_ids))}
    missing = sorted(set(user_ids) - found)
    if missing:
        raise NotFound(f"no such user: {missing[0]}")

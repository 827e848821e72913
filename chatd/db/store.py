"""Every SQL statement chatd runs, and the only module that sees asyncpg records.

Statements are module constants with ``$n`` parameters (asyncpg prepares and
caches them per connection). Each public method is one unit of work, one
crossing of the Trio/asyncio bridge: the statements it needs run inside one
asyncio coroutine. Records never leave this module: methods return the value
classes of :mod:`chatd.models`.

Who receives a channel's events is decided in one place, the SQL function
``chatd_recipients`` (migrations/0001_init.sql); inbox rows are appended only
by ``chatd_append_inbox``, which locks the users' counter rows in id order.

Lock order, in every transaction that changes a channel or sends into one
(migrations/0003_channel_locks.sql): the channel row, then every user row the
transaction will touch, by id (``chatd_lock_users``), before anything is
inserted, because each foreign key to ``users`` also locks the user's row. A
channel being created is new: no one else can wait for its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import attrs

from chatd import hints
from chatd.db.bridge import Connection, Database
from chatd.errors import ChatdError, Conflict, Forbidden, Invalid, NotFound, NotMember, TooLarge
from chatd.models import (
    Ack,
    Channel,
    InboxAdvance,
    InboxEvent,
    Message,
    Principal,
    SendOutcome,
    User,
    format_time,
)

# --- users and devices -------------------------------------------------------

_INSERT_USER = """
INSERT INTO users (username, display_name, password_hash, is_admin)
VALUES ($1, $2, $3, $4)
ON CONFLICT (lower(username)) DO NOTHING
RETURNING id, username, display_name, is_admin, disabled
"""
_USER_BY_NAME = """
SELECT id, username, display_name, is_admin, disabled, password_hash
FROM users WHERE lower(username) = lower($1)
"""
_USER_BY_ID = "SELECT id, username, display_name, is_admin, disabled FROM users WHERE id = $1"
_SEARCH_USERS = """
SELECT id, username, display_name, is_admin, disabled FROM users
WHERE NOT disabled
  AND ($1 = '' OR strpos(lower(username), lower($1)) > 0 OR strpos(lower(display_name), lower($1)) > 0)
ORDER BY username LIMIT $2
"""
_ALL_USERS = "SELECT id, username, display_name, is_admin, disabled FROM users ORDER BY id"
_SET_DISABLED = "UPDATE users SET disabled = $2 WHERE lower(username) = lower($1) RETURNING id"
_REVOKE_USER_DEVICES = "UPDATE devices SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL"
_SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE lower(username) = lower($1) RETURNING id"
_INSERT_DEVICE = "INSERT INTO devices (user_id, name, token_hash) VALUES ($1, $2, $3) RETURNING id"
_AUTHENTICATE = """
SELECT d.id AS device_id, u.id AS user_id, u.is_admin, u.inbox_head
FROM devices d JOIN users u ON u.id = d.user_id
WHERE d.token_hash = $1 AND d.revoked_at IS NULL AND NOT u.disabled
  AND ($2::integer = 0 OR d.created_at > now() - make_interval(days => $2::integer))
"""
_REVOKE_DEVICE = "UPDATE devices SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
#: Every node closes the live connections of a revoked device or user (chatd.hints).
_NOTIFY_REVOKED = f"SELECT pg_notify('{hints.CHANNEL}', $1)"
_EXISTING_USERS = "SELECT id FROM users WHERE id = ANY($1::bigint[]) AND NOT disabled"

# --- channels -----------------------------------------------------------------

_CHANNEL_FOR_MEMBER = """
SELECT c.id, c.kind, c.name, c.member_count, c.last_seq, c.created_by, m.read_seq
FROM channels c JOIN members m ON m.channel_id = c.id AND m.user_id = $2
WHERE c.id = $1
"""
_LOCK_CHANNEL = "SELECT id, kind, created_by, member_count FROM channels WHERE id = $1 FOR UPDATE"
_IS_MEMBER = "SELECT 1 FROM members WHERE channel_id = $1 AND user_id = $2"
_CHANNELS_OF_USER = """
SELECT c.id, c.kind, c.name, c.member_count, c.last_seq, c.created_by, m.read_seq
FROM members m JOIN channels c ON c.id = m.channel_id
WHERE m.user_id = $1 ORDER BY c.id
"""
_MEMBER_IDS = "SELECT user_id FROM members WHERE channel_id = $1 ORDER BY user_id"
_INSERT_CHANNEL = """
INSERT INTO channels (kind, name, created_by, dm_key) VALUES ($1, $2, $3, $4)
ON CONFLICT (dm_key) DO NOTHING
RETURNING id
"""
_DM_BY_KEY = "SELECT id FROM channels WHERE dm_key = $1"
_INSERT_MEMBERS = """
INSERT INTO members (channel_id, user_id)
SELECT $1, u FROM unnest($2::bigint[]) AS u
ON CONFLICT DO NOTHING
RETURNING user_id
"""
_DELETE_MEMBER = "DELETE FROM members WHERE channel_id = $1 AND user_id = $2 RETURNING user_id"
_COUNT_MEMBERS = """
UPDATE channels SET member_count = (SELECT count(*) FROM members WHERE channel_id = $1)
WHERE id = $1
"""
_RENAME = "UPDATE channels SET name = $2 WHERE id = $1"
_LOCK_USERS = "SELECT chatd_lock_users($1::bigint[])"
_RECIPIENTS = "SELECT chatd_recipients($1)"
_APPEND_INBOX = "SELECT user_ids, inbox_seqs FROM chatd_append_inbox($1::bigint[], $2, $3, $4, $5::jsonb)"
_ALL_CHANNELS = """
SELECT c.id, c.kind, c.name, c.member_count, c.last_seq, coalesce(u.username, '') AS creator
FROM channels c LEFT JOIN users u ON u.id = c.created_by ORDER BY c.id
"""
_CHANNEL_ACTOR = """
SELECT coalesce(
    (SELECT m.user_id FROM members m JOIN channels c ON c.id = m.channel_id
     WHERE c.id = $1 AND m.user_id = c.created_by),
    (SELECT min(user_id) FROM members WHERE channel_id = $1))
"""
_NODE_CONNECTIONS = """
SELECT substr(application_name, 7) AS node, count(*) AS n FROM pg_stat_activity
WHERE application_name LIKE 'chatd:%' AND datname = current_database() GROUP BY 1 ORDER BY 1
"""
_REGISTER_NODE = """
INSERT INTO nodes (name, url) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET url = $2, started_at = now(), heartbeat_at = now(), connections = 0
"""
_FORGET_NODE_USERS = "DELETE FROM node_users WHERE node = $1"
_HEARTBEAT = "UPDATE nodes SET heartbeat_at = now(), connections = $2 WHERE name = $1 RETURNING name"
_UPSERT_NODE_USERS = """
INSERT INTO node_users (node, user_id, connections)
SELECT $1, u, c FROM unnest($2::bigint[], $3::int[]) AS t (u, c)
ON CONFLICT (node, user_id) DO UPDATE SET connections = excluded.connections
"""
_DELETE_NODE_USERS = "DELETE FROM node_users WHERE node = $1 AND user_id = ANY($2::bigint[])"
_EXPIRE_NODES = "DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING name"
_UNREGISTER_NODE = "DELETE FROM nodes WHERE name = $1"
_NODES = """
SELECT name, url, started_at, heartbeat_at, connections,
       heartbeat_at >= now() - make_interval(secs => $1) AS alive
FROM nodes ORDER BY name
"""
_MESSAGE = """
SELECT channel_id, seq, sender_id, client_msg_id, text, created_at FROM messages
WHERE channel_id = $1 AND seq = $2
"""
_MEMBERS_AMONG = "SELECT user_id FROM members WHERE channel_id = $1 AND user_id = ANY($2::bigint[])"
_GROUP_BY_NAME = "SELECT id FROM channels WHERE kind = 'group' AND name = $1 ORDER BY id"

# --- messages and inbox -------------------------------------------------------

_SEND = "SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs FROM chatd_send($1, $2, $3, $4, $5)"
_SEND_BATCH = """
SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs
FROM chatd_send_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5)
"""
_HISTORY_BEFORE = """
SELECT channel_id, seq, sender_id, client_msg_id, text, created_at FROM messages
WHERE channel_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3
"""
_HISTORY_AFTER = """
SELECT channel_id, seq, sender_id, client_msg_id, text, created_at FROM messages
WHERE channel_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3
"""
_INBOX_AFTER = """
SELECT inbox_seq, kind, channel_id, seq, data FROM inbox
WHERE user_id = $1 AND inbox_seq > $2 ORDER BY inbox_seq LIMIT $3
"""
_MESSAGES_BY_KEY = """
SELECT m.channel_id, m.seq, m.sender_id, m.client_msg_id, m.text, m.created_at
FROM unnest($1::bigint[], $2::bigint[]) AS k (channel_id, seq)
JOIN messages m ON m.channel_id = k.channel_id AND m.seq = k.seq
"""
_INBOX_HEAD = "SELECT inbox_head FROM users WHERE id = $1"

# --- admin ----------------------------------------------------------------------

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
        "member_count out of date",
        """
        SELECT c.id FROM channels c LEFT JOIN members m ON m.channel_id = c.id
        GROUP BY c.id HAVING count(m.user_id) <> c.member_count LIMIT 10
        """,
    ),
)


class BatchFailed(Exception):
    """A batch of sends could not commit for a reason of the database's (a race
    on a client_msg_id between nodes, a serialization failure...): nothing of it
    was stored, and each send may be retried on its own."""


@attrs.frozen
class SendRequest:
    sender: int
    channel_id: int
    client_msg_id: str
    text: str


def _outcome(record: Any, client_msg_id: str) -> SendOutcome | ChatdError:
    if record["status"] == "not_member":
        return NotMember("not a member of this channel")
    ack = Ack(
        client_msg_id=client_msg_id,
        channel_id=record["channel_id"],
        seq=record["seq"],
        created_at=record["created_at"],
        duplicate=record["status"] == "duplicate",
    )
    return SendOutcome(ack, _advances(record["user_ids"], record["inbox_seqs"]))


def _user(record: Any) -> User:
    return User(
        user_id=record["id"],
        username=record["username"],
        display_name=record["display_name"],
        is_admin=record["is_admin"],
        disabled=record["disabled"],
    )


def _channel(record: Any, members: Sequence[int] | None = None) -> Channel:
    return Channel(
        channel_id=record["id"],
        kind=record["kind"],
        name=record["name"],
        member_count=record["member_count"],
        last_seq=record["last_seq"],
        read_seq=record["read_seq"],
        members=tuple(members) if members is not None else None,
    )


def _message(record: Any) -> Message:
    return Message(
        channel_id=record["channel_id"],
        seq=record["seq"],
        sender_id=record["sender_id"],
        client_msg_id=record["client_msg_id"],
        text=record["text"],
        created_at=record["created_at"],
    )


def _advances(user_ids: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[InboxAdvance, ...]:
    return tuple(InboxAdvance(u, h) for u, h in zip(user_ids or (), heads or ()))


async def _append(
    conn: Connection, users: Sequence[int], kind: str, channel_id: int, data: dict[str, Any]
) -> tuple[InboxAdvance, ...]:
    """Append one non-message event to each user's inbox (the channel row is already locked)."""
    if not users:
        return ()
    row = await conn.fetchrow(_APPEND_INBOX, list(users), kind, channel_id, None, data)
    assert row is not None  # a function call always returns its row
    return _advances(row["user_ids"], row["inbox_seqs"])


async def _require_users(conn: Connection, user_ids: Sequence[int]) -> None:
    found = {r["id"] for r in await conn.fetch(_EXISTING_USERS, list(user_ids))}
    missing = sorted(set(user_ids) - found)
    if missing:
        raise NotFound(f"no such user: {missing[0]}")


class Store:
    """chatd's storage: one method per unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users -----------------------------------------------------------------

    async def create_user(
        self, username: str, display_name: str, password_hash: str | None, is_admin: bool
    ) -> User:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_INSERT_USER, username, display_name, password_hash, is_admin)

        record = await self.db.transaction(unit)
        if record is None:
            raise Conflict(f"user {username!r} already exists")
        return _user(record)

    async def user_credentials(self, username: str) -> tuple[User, str | None] | None:
        """The user and its password hash, for login; None when no such user."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_USER_BY_NAME, username)

        record = await self.db.read(unit)
        return None if record is None else (_user(record), record["password_hash"])

    async def get_user(self, user_id: int) -> User:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_USER_BY_ID, user_id)

        record = await self.db.read(unit)
        if record is None:
            raise NotFound("no such user")
        return _user(record)

    async def search_users(self, query: str, limit: int) -> list[User]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_SEARCH_USERS, query, limit))

        return [_user(r) for r in await self.db.read(unit)]

    async def all_users(self) -> list[User]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_ALL_USERS))

        return [_user(r) for r in await self.db.read(unit)]

    async def disable_user(self, username: str) -> int:
        """Disable the user and revoke every token it holds; returns its id."""

        async def unit(conn: Connection) -> int | None:
            user_id = await conn.fetchval(_SET_DISABLED, username, True)
            if user_id is not None:
                await conn.execute(_REVOKE_USER_DEVICES, user_id)
                await conn.execute(_NOTIFY_REVOKED, hints.encode(hints.UserRevoked(user_id)))
            return user_id  # type: ignore[no-any-return]

        user_id = await self.db.transaction(unit)
        if user_id is None:
            raise NotFound(f"no such user: {username}")
        return user_id

    async def set_password(self, username: str, password_hash: str) -> int:
        """Set the password and revoke every token of the user (a leaked
        password's sessions must not outlive the change); returns its id."""

        async def unit(conn: Connection) -> int | None:
            user_id = await conn.fetchval(_SET_PASSWORD, username, password_hash)
            if user_id is not None:
                await conn.execute(_REVOKE_USER_DEVICES, user_id)
                await conn.execute(_NOTIFY_REVOKED, f"u:{user_id}")
            return user_id  # type: ignore[no-any-return]

        user_id = await self.db.transaction(unit)
        if user_id is None:
            raise NotFound(f"no such user: {username}")
        return user_id

    # --- devices and tokens ---------------------------------------------------------

    async def create_device(self, user_id: int, name: str, token_hash: bytes) -> int:
        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_INSERT_DEVICE, user_id, name, token_hash))

        return await self.db.transaction(unit)

    async def authenticate(self, token_hash: bytes, ttl_days: int = 0) -> Principal | None:
        """The token's principal; None when unknown, revoked, of a disabled
        user, or (``ttl_days`` > 0) issued more than ``ttl_days`` days ago."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_AUTHENTICATE, token_hash, ttl_days)

        record = await self.db.read(unit)
        if record is None:
            return None
        return Principal(record["user_id"], record["device_id"], record["is_admin"], record["inbox_head"])

    async def revoke_device(self, device_id: int) -> None:
        async def unit(conn: Connection) -> None:
            await conn.execute(_REVOKE_DEVICE, device_id)
            await conn.execute(_NOTIFY_REVOKED, hints.encode(hints.DeviceRevoked(device_id)))

        await self.db.transaction(unit)

    # --- channels -------------------------------------------------------------------

    async def create_group(
        self, creator: int, name: str, member_ids: Sequence[int], max_members: int
    ) -> tuple[Channel, tuple[InboxAdvance, ...]]:
        members = sorted(set(member_ids) | {creator})
        if len(members) > max_members:
            raise TooLarge(f"a group has at most {max_members} members")

        async def unit(conn: Connection) -> tuple[Channel, tuple[InboxAdvance, ...]]:
            await _require_users(conn, members)
            await conn.execute(_LOCK_USERS, members)
            channel_id = await conn.fetchval(_INSERT_CHANNEL, "group", name, creator, None)
            return await self._populate(conn, channel_id, creator, members, name)

        return await self.db.transaction(unit)

    async def get_or_create_dm(
        self, creator: int, other: int
    ) -> tuple[Channel, bool, tuple[InboxAdvance, ...]]:
        """The DM channel of this pair: (channel, created, advances). Idempotent per pair."""
        if creator == other:
            raise Invalid("members: a direct message needs another user")
        low, high = sorted((creator, other))
        key = f"{low}:{high}"

        async def unit(conn: Connection) -> tuple[Channel, bool, tuple[InboxAdvance, ...]]:
            existing = await conn.fetchval(_DM_BY_KEY, key)
            if existing is None:
                await _require_users(conn, [other])
                await conn.execute(_LOCK_USERS, [low, high])
                channel_id = await conn.fetchval(_INSERT_CHANNEL, "dm", None, creator, key)
                if channel_id is None:  # created by a transaction that committed meanwhile
                    existing = await conn.fetchval(_DM_BY_KEY, key)
            if existing is not None:
                return await self._channel_for(conn, existing, creator, with_members=True), False, ()
            channel, advances = await self._populate(conn, channel_id, creator, [low, high], None)
            return channel, True, advances

        return await self.db.transaction(unit)

    async def _populate(
        self, conn: Connection, channel_id: int, creator: int, members: Sequence[int], name: str | None
    ) -> tuple[Channel, tuple[InboxAdvance, ...]]:
        # The channel is new (its row invisible to others) and the members'
        # rows are already locked, in order, by the caller.
        await conn.fetch(_INSERT_MEMBERS, channel_id, list(members))
        await conn.execute(_COUNT_MEMBERS, channel_id)
        recipients = await conn.fetchval(_RECIPIENTS, channel_id)
        advances = await _append(
            conn, recipients, "channel", channel_id, {"channel_id": channel_id, "change": "created", "name": name}
        )
        return await self._channel_for(conn, channel_id, creator, with_members=True), advances

    async def _channel_for(
        self, conn: Connection, channel_id: int, user_id: int, *, with_members: bool = False
    ) -> Channel:
        record = await conn.fetchrow(_CHANNEL_FOR_MEMBER, channel_id, user_id)
        if record is None:
            raise NotMember("not a member of this channel")
        members = None
        if with_members:
            members = [r["user_id"] for r in await conn.fetch(_MEMBER_IDS, channel_id)]
        return _channel(record, members)

    async def list_channels(self, user_id: int) -> list[Channel]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_CHANNELS_OF_USER, user_id))

        return [_channel(r) for r in await self.db.read(unit)]

    async def get_channel(self, channel_id: int, user_id: int) -> Channel:
        """The channel with its members, for a member; NotMember otherwise (existing or not)."""

        async def unit(conn: Connection) -> Channel:
            return await self._channel_for(conn, channel_id, user_id, with_members=True)

        return await self.db.read(unit)

    async def _lock_for_member(self, conn: Connection, channel_id: int, user_id: int) -> Any:
        channel = await conn.fetchrow(_LOCK_CHANNEL, channel_id)
        if channel is None or await conn.fetchval(_IS_MEMBER, channel_id, user_id) is None:
            raise NotMember("not a member of this channel")
        return channel

    async def rename_channel(
        self, channel_id: int, by: int, name: str
    ) -> tuple[Channel, tuple[InboxAdvance, ...]]:
        async def unit(conn: Connection) -> tuple[Channel, tuple[InboxAdvance, ...]]:
            channel = await self._lock_for_member(conn, channel_id, by)
            if channel["kind"] != "group":
                raise Invalid("only a group can be renamed")
            await conn.execute(_RENAME, channel_id, name)
            recipients = await conn.fetchval(_RECIPIENTS, channel_id)
            advances = await _append(
                conn, recipients, "channel", channel_id, {"channel_id": channel_id, "change": "renamed", "name": name}
            )
            return await self._channel_for(conn, channel_id, by, with_members=True), advances

        return await self.db.transaction(unit)

    async def add_members(
        self, channel_id: int, by: int, user_ids: Sequence[int], max_members: int
    ) -> tuple[Channel, tuple[InboxAdvance, ...]]:
        async def unit(conn: Connection) -> tuple[Channel, tuple[InboxAdvance, ...]]:
            channel = await self._lock_for_member(conn, channel_id, by)
            if channel["kind"] != "group":
                raise Invalid("members cannot be added to a direct message")
            await _require_users(conn, user_ids)
            # Every member learns of the addition: lock them all, and the added, in id order.
            current = [r["user_id"] for r in await conn.fetch(_MEMBER_IDS, channel_id)]
            await conn.execute(_LOCK_USERS, sorted(set(current) | set(user_ids)))
            added = sorted(r["user_id"] for r in await conn.fetch(_INSERT_MEMBERS, channel_id, list(user_ids)))
            await conn.execute(_COUNT_MEMBERS, channel_id)
            if channel["member_count"] + len(added) > max_members:
                raise TooLarge(f"a group has at most {max_members} members")
            advances: tuple[InboxAdvance, ...] = ()
            if added:
                recipients = await conn.fetchval(_RECIPIENTS, channel_id)
                for user_id in added:
                    advances += await _append(
                        conn,
                        recipients,
                        "member",
                        channel_id,
                        {"channel_id": channel_id, "user_id": user_id, "change": "added", "by": by},
                    )
            return await self._channel_for(conn, channel_id, by, with_members=True), advances

        return await self.db.transaction(unit)

    async def remove_member(
        self, channel_id: int, by: int, user_id: int, by_admin: bool
    ) -> tuple[InboxAdvance, ...]:
        async def unit(conn: Connection) -> tuple[InboxAdvance, ...]:
            channel = await self._lock_for_member(conn, channel_id, by)
            if channel["kind"] != "group":
                raise Invalid("members cannot be removed from a direct message")
            if user_id != by and not by_admin and channel["created_by"] != by:
                raise Forbidden("only the creator or an admin may remove others")
            # Recipients before the removal: the removed user learns it too.
            recipients = await conn.fetchval(_RECIPIENTS, channel_id)
            await conn.execute(_LOCK_USERS, recipients)
            if await conn.fetchval(_DELETE_MEMBER, channel_id, user_id) is None:
                raise NotFound("not a member of this channel")
            await conn.execute(_COUNT_MEMBERS, channel_id)
            return await _append(
                conn,
                recipients,
                "member",
                channel_id,
                {"channel_id": channel_id, "user_id": user_id, "change": "removed", "by": by},
            )

        return await self.db.transaction(unit)

    async def all_channels(self) -> list[dict[str, Any]]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_ALL_CHANNELS))

        return [dict(r) for r in await self.db.read(unit)]

    async def group_id_by_name(self, name: str) -> int:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_GROUP_BY_NAME, name))

        found = await self.db.read(unit)
        if not found:
            raise NotFound(f"no group named {name!r}")
        if len(found) > 1:
            raise Conflict(f"several groups are named {name!r}")
        return int(found[0]["id"])

    async def channel_actor(self, channel_id: int) -> int:
        """Whom an admin command acts for: the creator if still a member, else the first member."""

        async def unit(conn: Connection) -> int | None:
            return await conn.fetchval(_CHANNEL_ACTOR, channel_id)  # type: ignore[no-any-return]

        actor = await self.db.read(unit)
        if actor is None:
            raise NotFound("the channel has no members")
        return actor

    # --- messages ---------------------------------------------------------------------

    async def send(
        self, sender: int, channel_id: int, client_msg_id: str, text: str, inbox_max_members: int
    ) -> SendOutcome:
        """Commit one message with its seq and inbox entries, in one round trip."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_SEND, sender, channel_id, client_msg_id, text, inbox_max_members)

        outcome = _outcome(await self.db.transaction(unit), client_msg_id)
        if isinstance(outcome, ChatdError):
            raise outcome
        return outcome

    async def send_batch(
        self, requests: Sequence[SendRequest], inbox_max_members: int
    ) -> list[SendOutcome | ChatdError]:
        """Commit many sends in one transaction; one answer per request, in order.

        A non-member is an answer (NotMember), not a failure. Raises Unavailable
        when the database cannot be reached, BatchFailed when it refused the
        batch as a whole (nothing stored; each send may be retried alone).
        """

        async def unit(conn: Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    _SEND_BATCH,
                    [r.sender for r in requests],
                    [r.channel_id for r in requests],
                    [r.client_msg_id for r in requests],
                    [r.text for r in requests],
                    inbox_max_members,
                )
            )

        try:
            records = await self.db.transaction(unit)
        except asyncpg.PostgresError as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        return [_outcome(rec, req.client_msg_id) for rec, req in zip(records, requests)]

    async def history(
        self, channel_id: int, user_id: int, *, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        async def unit(conn: Connection) -> list[Any]:
            if await conn.fetchval(_IS_MEMBER, channel_id, user_id) is None:
                raise NotMember("not a member of this channel")
            if after is not None:
                return list(await conn.fetch(_HISTORY_AFTER, channel_id, after, limit))
            bound = before if before is not None else 2**63 - 1
            return list(await conn.fetch(_HISTORY_BEFORE, channel_id, bound, limit))

        return [_message(r) for r in await self.db.read(unit)]

    # --- inbox ---------------------------------------------------------------------------

    async def read_inbox(self, user_id: int, after: int, limit: int) -> list[InboxEvent]:
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
                messages = list(
                    await conn.fetch(_MESSAGES_BY_KEY, [c for c, _ in refs], [s for _, s in refs])
                )
            return rows, messages

        rows, message_rows = await self.db.read(unit)
        by_key = {(m["channel_id"], m["seq"]): _message(m) for m in message_rows}
        events = []
        for row in rows:
            if row["kind"] == "message":
                message = by_key[(row["channel_id"], row["seq"])]
                fields = message.to_json()
            else:
                fields = dict(row["data"] or {})
            events.append(InboxEvent(row["inbox_seq"], row["kind"], fields))
        return events

    async def inbox_head(self, user_id: int) -> int:
        async def unit(conn: Connection) -> int:
            return int(await conn.fetchval(_INBOX_HEAD, user_id) or 0)

        return await self.db.read(unit)

    # --- admin -------------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_STATS)

        return dict(await self.db.read(unit))

    async def node_connections(self) -> dict[str, int]:
        """Database connections per chatd node (application_name ``chatd:<node>``)."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_NODE_CONNECTIONS))

        return {r["node"]: r["n"] for r in await self.db.read(unit)}

    # --- the node registry ----------------------------------------------------------------

    async def register_node(self, name: str, url: str) -> None:
        """Announce this node (a restarted node of the same name starts afresh)."""

        async def unit(conn: Connection) -> None:
            await conn.execute(_REGISTER_NODE, name, url)
            await conn.execute(_FORGET_NODE_USERS, name)

        await self.db.transaction(unit)

    async def heartbeat(
        self, name: str, connections: int, changed: dict[int, int], expiry_s: float
    ) -> tuple[bool, list[str]]:
        """Record this node's heartbeat and the users whose connection count changed
        (0: gone); expire nodes silent for ``expiry_s``. Returns (this node was still
        registered, the names expired)."""
        present = [(u, n) for u, n in changed.items() if n > 0]
        gone = [u for u, n in changed.items() if n <= 0]

        async def unit(conn: Connection) -> tuple[bool, list[str]]:
            expired = [r["name"] for r in await conn.fetch(_EXPIRE_NODES, expiry_s)]
            known = await conn.fetchval(_HEARTBEAT, name, connections) is not None
            if known:
                if present:
                    await conn.execute(_UPSERT_NODE_USERS, name, [u for u, _ in present], [n for _, n in present])
                if gone:
                    await conn.execute(_DELETE_NODE_USERS, name, gone)
            return known, expired

        return await self.db.transaction(unit)

    async def unregister_node(self, name: str) -> None:
        async def unit(conn: Connection) -> None:
            await conn.execute(_UNREGISTER_NODE, name)

        await self.db.transaction(unit)

    async def nodes(self, expiry_s: float) -> list[dict[str, Any]]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_NODES, expiry_s))

        return [dict(r) for r in await self.db.read(unit)]

    # --- large channels ----------------------------------------------------------------------

    async def message(self, channel_id: int, seq: int) -> Message | None:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_MESSAGE, channel_id, seq)

        record = await self.db.read(unit)
        return None if record is None else _message(record)

    async def members_among(self, channel_id: int, user_ids: Sequence[int]) -> list[int]:
        """Which of these users are members of the channel (one query, for live fan-out)."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_MEMBERS_AMONG, channel_id, list(user_ids)))

        return [r["user_id"] for r in await self.db.read(unit)]

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


__all__ = ["BatchFailed", "SendRequest", "Store", "VERIFY_CHECKS", "format_time"]

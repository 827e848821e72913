"""Channels and their members: creation, rename, membership changes, lookups.

Each change writes, in its own transaction, the inbox event every recipient
must learn of. What the event says is the services' (``chatd.services.events``)
and so is who may make the change: a change takes the event's data and a
:data:`Rule`, which runs inside the transaction on the locked channel row and
refuses by raising (the transaction then rolls back, nothing is written).

Lock order, in every transaction that changes a channel or sends into one
(migrations/0003_channel_locks.sql): the channel row, then every user row the
transaction will touch, by id (``chatd_lock_users``), before anything is
inserted, because each foreign key to ``users`` also locks the user's row. A
channel being created is new: no one else can wait for its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chatd.db import records
from chatd.db.bridge import Connection, Database
from chatd.db.records import IS_MEMBER, LOCK_USERS, RECIPIENTS
from chatd.errors import Conflict, NotFound, NotMember
from chatd.models import Channel, ChannelFacts, ChannelSummary, InboxAdvance

#: The data of one inbox event (JSON), as a service shaped it.
EventData = Mapping[str, Any]
#: A service's rule on a change, run on the locked channel row inside the
#: transaction (so pure: no I/O, no Trio); it raises a ChatdError to refuse.
Rule = Callable[[ChannelFacts], None]
Advances = tuple[InboxAdvance, ...]

_CHANNEL_FOR_MEMBER = """
SELECT c.id, c.kind, c.name, c.member_count, c.last_seq, c.created_by, m.read_seq
FROM channels c JOIN members m ON m.channel_id = c.id AND m.user_id = $2
WHERE c.id = $1
"""
_LOCK_CHANNEL = "SELECT id, kind, created_by, member_count FROM channels WHERE id = $1 FOR UPDATE"
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
_ALL_CHANNELS = """
SELECT c.id, c.kind, c.name, c.member_count, c.last_seq, coalesce(u.username, '') AS creator
FROM channels c LEFT JOIN users u ON u.id = c.created_by WHERE c.id > 0 ORDER BY c.id
"""
_CHANNEL_ACTOR = """
SELECT coalesce(
    (SELECT m.user_id FROM members m JOIN channels c ON c.id = m.channel_id
     WHERE c.id = $1 AND m.user_id = c.created_by),
    (SELECT min(user_id) FROM members WHERE channel_id = $1))
"""
_MEMBERS_AMONG = "SELECT user_id FROM members WHERE channel_id = $1 AND user_id = ANY($2::bigint[])"
#: Channel 0 (the echo probe's, migrations/0007_ops.sql) is left out of every admin's list and lookup.
_GROUP_BY_NAME = "SELECT id FROM channels WHERE kind = 'group' AND name = $1 AND id > 0 ORDER BY id"


class ChannelStore:
    """The ``channels`` and ``members`` tables: one method per unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- changes ---------------------------------------------------------------------

    async def create_group(
        self, creator: int, name: str, members: Sequence[int], created: Callable[[int], EventData]
    ) -> tuple[Channel, Advances]:
        """A new group of ``members`` (the creator among them); ``created(channel_id)``
        is the event every member receives."""
        ids = sorted(set(members) | {creator})

        async def unit(conn: Connection) -> tuple[Channel, Advances]:
            await records.require_users(conn, ids)
            await conn.execute(LOCK_USERS, ids)
            channel_id = await conn.fetchval(_INSERT_CHANNEL, "group", name, creator, None)
            return await self._populate(conn, channel_id, creator, ids, created(channel_id))

        return await self.db.transaction(unit)

    async def get_or_create_dm(
        self, creator: int, other: int, created: Callable[[int], EventData]
    ) -> tuple[Channel, bool, Advances]:
        """The DM channel of this pair: (channel, created, advances). Idempotent per pair."""
        low, high = sorted((creator, other))
        key = f"{low}:{high}"

        async def unit(conn: Connection) -> tuple[Channel, bool, Advances]:
            existing = await conn.fetchval(_DM_BY_KEY, key)
            if existing is None:
                await records.require_users(conn, [other])
                await conn.execute(LOCK_USERS, [low, high])
                channel_id = await conn.fetchval(_INSERT_CHANNEL, "dm", None, creator, key)
                if channel_id is None:  # created by a transaction that committed meanwhile
                    existing = await conn.fetchval(_DM_BY_KEY, key)
            if existing is not None:
                return await _channel_for(conn, existing, creator, with_members=True), False, ()
            channel, advances = await self._populate(conn, channel_id, creator, [low, high], created(channel_id))
            return channel, True, advances

        return await self.db.transaction(unit)

    async def _populate(
        self, conn: Connection, channel_id: int, creator: int, members: Sequence[int], event: EventData
    ) -> tuple[Channel, Advances]:
        # The channel is new (its row invisible to others) and the members'
        # rows are already locked, in order, by the caller.
        await conn.fetch(_INSERT_MEMBERS, channel_id, list(members))
        await conn.execute(_COUNT_MEMBERS, channel_id)
        recipients = await conn.fetchval(RECIPIENTS, channel_id)
        advances = await records.append_inbox(conn, recipients, "channel", channel_id, event)
        return await _channel_for(conn, channel_id, creator, with_members=True), advances

    async def rename(
        self, channel_id: int, by: int, name: str, rule: Rule, event: EventData
    ) -> tuple[Channel, Advances]:
        async def unit(conn: Connection) -> tuple[Channel, Advances]:
            rule(await _lock_for_member(conn, channel_id, by))
            await conn.execute(_RENAME, channel_id, name)
            recipients = await conn.fetchval(RECIPIENTS, channel_id)
            advances = await records.append_inbox(conn, recipients, "channel", channel_id, event)
            return await _channel_for(conn, channel_id, by, with_members=True), advances

        return await self.db.transaction(unit)

    async def add_members(
        self,
        channel_id: int,
        by: int,
        user_ids: Sequence[int],
        rule: Rule,
        fits: Callable[[int], None],
        added: Callable[[int], EventData],
    ) -> tuple[Channel, Advances]:
        """Add the users not yet members; ``fits(member_count)`` refuses a channel
        grown too large, ``added(user_id)`` is the event of each one added."""

        async def unit(conn: Connection) -> tuple[Channel, Advances]:
            channel = await _lock_for_member(conn, channel_id, by)
            rule(channel)
            await records.require_users(conn, user_ids)
            # Every member learns of the addition: lock them all, and the added, in id order.
            current = [r["user_id"] for r in await conn.fetch(_MEMBER_IDS, channel_id)]
            await conn.execute(LOCK_USERS, sorted(set(current) | set(user_ids)))
            new = sorted(r["user_id"] for r in await conn.fetch(_INSERT_MEMBERS, channel_id, list(user_ids)))
            await conn.execute(_COUNT_MEMBERS, channel_id)
            fits(channel.member_count + len(new))
            advances: Advances = ()
            if new:
                recipients = await conn.fetchval(RECIPIENTS, channel_id)
                for user_id in new:
                    advances += await records.append_inbox(conn, recipients, "member", channel_id, added(user_id))
            return await _channel_for(conn, channel_id, by, with_members=True), advances

        return await self.db.transaction(unit)

    async def remove_member(self, channel_id: int, by: int, user_id: int, rule: Rule, event: EventData) -> Advances:
        async def unit(conn: Connection) -> Advances:
            rule(await _lock_for_member(conn, channel_id, by))
            # Recipients before the removal: the removed user learns it too.
            recipients = await conn.fetchval(RECIPIENTS, channel_id)
            await conn.execute(LOCK_USERS, recipients)
            if await conn.fetchval(_DELETE_MEMBER, channel_id, user_id) is None:
                raise NotFound("not a member of this channel")
            await conn.execute(_COUNT_MEMBERS, channel_id)
            return await records.append_inbox(conn, recipients, "member", channel_id, event)

        return await self.db.transaction(unit)

    # --- lookups -------------------------------------------------------------------------

    async def of_user(self, user_id: int) -> list[Channel]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_CHANNELS_OF_USER, user_id))

        return [records.channel(r) for r in await self.db.read(unit)]

    async def get(self, channel_id: int, user_id: int) -> Channel:
        """The channel with its members, for a member; NotMember otherwise (existing or not)."""

        async def unit(conn: Connection) -> Channel:
            return await _channel_for(conn, channel_id, user_id, with_members=True)

        return await self.db.read(unit)

    async def members_among(self, channel_id: int, user_ids: Sequence[int]) -> list[int]:
        """Which of these users are members of the channel (one query, for live fan-out)."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_MEMBERS_AMONG, channel_id, list(user_ids)))

        return [r["user_id"] for r in await self.db.read(unit)]

    # --- for the administrator's commands ----------------------------------------------------

    async def summaries(self) -> list[ChannelSummary]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_ALL_CHANNELS))

        return [
            ChannelSummary(r["id"], r["kind"], r["name"], r["member_count"], r["last_seq"], r["creator"])
            for r in await self.db.read(unit)
        ]

    async def group_id_by_name(self, name: str) -> int:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_GROUP_BY_NAME, name))

        found = await self.db.read(unit)
        if not found:
            raise NotFound(f"no group named {name!r}")
        if len(found) > 1:
            raise Conflict(f"several groups are named {name!r}")
        return int(found[0]["id"])

    async def actor(self, channel_id: int) -> int:
        """Whom an admin command acts for: the creator if still a member, else the first member."""

        async def unit(conn: Connection) -> int | None:
            return await conn.fetchval(_CHANNEL_ACTOR, channel_id)  # type: ignore[no-any-return]

        actor = await self.db.read(unit)
        if actor is None:
            raise NotFound("the channel has no members")
        return actor


async def _channel_for(conn: Connection, channel_id: int, user_id: int, *, with_members: bool = False) -> Channel:
    record = await conn.fetchrow(_CHANNEL_FOR_MEMBER, channel_id, user_id)
    if record is None:
        raise NotMember("not a member of this channel")
    members = None
    if with_members:
        members = [r["user_id"] for r in await conn.fetch(_MEMBER_IDS, channel_id)]
    return records.channel(record, members)


async def _lock_for_member(conn: Connection, channel_id: int, user_id: int) -> ChannelFacts:
    row = await conn.fetchrow(_LOCK_CHANNEL, channel_id)
    if row is None or await conn.fetchval(IS_MEMBER, channel_id, user_id) is None:
        raise NotMember("not a member of this channel")
    return ChannelFacts(row["id"], row["kind"], row["created_by"], row["member_count"])

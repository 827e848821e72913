"""Channels and membership: creation (DM idempotent per pair), rename, add, remove.

Every change that members must learn of is written to their inboxes by the
store in the same transaction; this service wakes the local sessions.

Each change costs its author a token of ``ops`` (``limits.channel_ops_*``),
and each user it puts into a channel without asking (a group's members, added
members, a DM's other user) a token of ``invites``
(``limits.channel_invites_*``): a change writes an event to every member's
inbox, and a channel someone did not ask for is the spam vector, so both the
number of changes and their reach are bounded. Tokens are taken before any
database work and given back when nothing was written (an existing DM).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence

from chatd.db.channels import ChannelStore
from chatd.errors import Forbidden, Invalid, RateLimited, TooLarge
from chatd.hub import Hub
from chatd.models import Channel, ChannelFacts, ChannelSummary, Principal
from chatd.services.events import ChannelChanged, MemberChanged
from chatd.services.ratelimit import RateLimiter

MAX_NAME_CHARS = 100


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise Invalid(f"name: a string of 1..{MAX_NAME_CHARS} characters")
    return name


# --- the rules a change is checked against, on the locked channel row -----------------


def _may_rename(channel: ChannelFacts) -> None:
    if channel.kind != "group":
        raise Invalid("only a group can be renamed")


def _may_add(channel: ChannelFacts) -> None:
    if channel.kind != "group":
        raise Invalid("members cannot be added to a direct message")


def _may_remove(by: int, user_id: int, by_admin: bool) -> Callable[[ChannelFacts], None]:
    def rule(channel: ChannelFacts) -> None:
        if channel.kind != "group":
            raise Invalid("members cannot be removed from a direct message")
        if user_id != by and not by_admin and channel.created_by != by:
            raise Forbidden("only the creator or an admin may remove others")

    return rule


class ChannelService:
    def __init__(
        self, channels: ChannelStore, hub: Hub, *, max_group_members: int, ops: RateLimiter, invites: RateLimiter
    ) -> None:
        self.channels = channels
        self.hub = hub
        self.max_group_members = max_group_members
        self.ops = ops
        self.invites = invites

    def _charge(self, principal: Principal, invited: int) -> None:
        """Take one operation and ``invited`` invitations, or raise RateLimited taking nothing."""
        user = principal.user_id
        wait = self.ops.take(user)
        if wait:
            raise RateLimited("too many channel changes; slow down", wait)
        if invited:
            wait = self.invites.take(user, invited)
            if wait:
                self.ops.give_back(user)
                raise RateLimited("too many users added to channels; slow down", wait)

    def _refund(self, principal: Principal, invited: int) -> None:
        self.ops.give_back(principal.user_id)
        if invited:
            self.invites.give_back(principal.user_id, invited)

    def _fits(self, member_count: int) -> None:
        if member_count > self.max_group_members:
            raise TooLarge(f"a group has at most {self.max_group_members} members")

    async def create_group(self, principal: Principal, name: str, members: Sequence[int]) -> Channel:
        name = check_name(name)
        self._charge(principal, len(set(members) - {principal.user_id}))
        return await self.create_group_for(principal.user_id, name, members)

    async def open_dm(self, principal: Principal, other: int) -> tuple[Channel, bool]:
        self._charge(principal, 1)
        if other == principal.user_id:
            raise Invalid("members: a direct message needs another user")
        channel, created, advances = await self.channels.get_or_create_dm(
            principal.user_id, other, lambda channel_id: ChannelChanged(channel_id, "created", None).to_data()
        )
        if not created:  # opening an existing DM writes nothing
            self._refund(principal, 1)
        self.hub.advance(advances)
        return channel, created

    async def list(self, principal: Principal) -> list[Channel]:
        return await self.channels.of_user(principal.user_id)

    async def get(self, principal: Principal, channel_id: int) -> Channel:
        return await self.channels.get(channel_id, principal.user_id)

    async def rename(self, principal: Principal, channel_id: int, name: str) -> Channel:
        name = check_name(name)
        self._charge(principal, 0)
        channel, advances = await self.channels.rename(
            channel_id, principal.user_id, name, _may_rename, ChannelChanged(channel_id, "renamed", name).to_data()
        )
        self.hub.advance(advances)
        return channel

    async def add_members(self, principal: Principal, channel_id: int, user_ids: Sequence[int]) -> Channel:
        self._charge(principal, len(set(user_ids) - {principal.user_id}))
        return await self._add(channel_id, principal.user_id, user_ids)

    async def _add(self, channel_id: int, by: int, user_ids: Sequence[int]) -> Channel:
        channel, advances = await self.channels.add_members(
            channel_id,
            by,
            user_ids,
            _may_add,
            self._fits,
            lambda user_id: MemberChanged(channel_id, user_id, "added", by).to_data(),
        )
        self.hub.advance(advances)
        return channel

    async def remove_member(self, principal: Principal, channel_id: int, user_id: int) -> None:
        self._charge(principal, 0)
        by = principal.user_id
        advances = await self.channels.remove_member(
            channel_id,
            by,
            user_id,
            _may_remove(by, user_id, principal.is_admin),
            MemberChanged(channel_id, user_id, "removed", by).to_data(),
        )
        self.hub.advance(advances)

    # --- the administrator's commands (``chatd channel ...``): no principal, no rate limit ---

    async def create_group_for(self, creator: int, name: str, members: Sequence[int]) -> Channel:
        """A group created by ``creator`` with ``members`` (and the creator)."""
        self._fits(len(set(members) | {creator}))
        channel, advances = await self.channels.create_group(
            creator, name, members, lambda channel_id: ChannelChanged(channel_id, "created", name).to_data()
        )
        self.hub.advance(advances)
        return channel

    async def group_id(self, name: str) -> int:
        """The group of this name (NotFound, or Conflict when several share it)."""
        return await self.channels.group_id_by_name(name)

    async def add_to_group(self, channel_id: int, user_ids: Sequence[int]) -> Channel:
        """Add users to a group, acting as its creator (or, gone, its first member)."""
        return await self._add(channel_id, await self.channels.actor(channel_id), user_ids)

    async def summaries(self) -> builtins.list[ChannelSummary]:
        return await self.channels.summaries()

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

from collections.abc import Sequence

from chatd.db.store import Store
from chatd.errors import Invalid, RateLimited
from chatd.hub import Hub
from chatd.models import Channel, Principal
from chatd.services.ratelimit import RateLimiter

MAX_NAME_CHARS = 100


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise Invalid(f"name: a string of 1..{MAX_NAME_CHARS} characters")
    return name


class ChannelService:
    def __init__(
        self, store: Store, hub: Hub, *, max_group_members: int, ops: RateLimiter, invites: RateLimiter
    ) -> None:
        self.store = store
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

    async def create_group(self, principal: Principal, name: str, members: Sequence[int]) -> Channel:
        name = check_name(name)
        self._charge(principal, len(set(members) - {principal.user_id}))
        channel, advances = await self.store.create_group(principal.user_id, name, members, self.max_group_members)
        self.hub.advance(advances)
        return channel

    async def open_dm(self, principal: Principal, other: int) -> tuple[Channel, bool]:
        self._charge(principal, 1)
        channel, created, advances = await self.store.get_or_create_dm(principal.user_id, other)
        if not created:  # opening an existing DM writes nothing
            self._refund(principal, 1)
        self.hub.advance(advances)
        return channel, created

    async def list(self, principal: Principal) -> list[Channel]:
        return await self.store.list_channels(principal.user_id)

    async def get(self, principal: Principal, channel_id: int) -> Channel:
        return await self.store.get_channel(channel_id, principal.user_id)

    async def rename(self, principal: Principal, channel_id: int, name: str) -> Channel:
        name = check_name(name)
        self._charge(principal, 0)
        channel, advances = await self.store.rename_channel(channel_id, principal.user_id, name)
        self.hub.advance(advances)
        return channel

    async def add_members(self, principal: Principal, channel_id: int, user_ids: Sequence[int]) -> Channel:
        self._charge(principal, len(set(user_ids) - {principal.user_id}))
        channel, advances = await self.store.add_members(
            channel_id, principal.user_id, user_ids, self.max_group_members
        )
        self.hub.advance(advances)
        return channel

    async def remove_member(self, principal: Principal, channel_id: int, user_id: int) -> None:
        self._charge(principal, 0)
        advances = await self.store.remove_member(channel_id, principal.user_id, user_id, principal.is_admin)
        self.hub.advance(advances)

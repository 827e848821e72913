"""Channels and membership: creation (DM idempotent per pair), rename, add, remove.

Every change that members must learn of is written to their inboxes by the
store in the same transaction; this service wakes the local sessions.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatd.db.store import Store
from chatd.errors import Invalid
from chatd.hub import Hub
from chatd.models import Channel, Principal

MAX_NAME_CHARS = 100


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise Invalid(f"name: a string of 1..{MAX_NAME_CHARS} characters")
    return name


class ChannelService:
    def __init__(self, store: Store, hub: Hub, *, max_group_members: int) -> None:
        self.store = store
        self.hub = hub
        self.max_group_members = max_group_members

    async def create_group(self, principal: Principal, name: str, members: Sequence[int]) -> Channel:
        channel, advances = await self.store.create_group(
            principal.user_id, check_name(name), members, self.max_group_members
        )
        self.hub.advance(advances)
        return channel

    async def open_dm(self, principal: Principal, other: int) -> tuple[Channel, bool]:
        channel, created, advances = await self.store.get_or_create_dm(principal.user_id, other)
        self.hub.advance(advances)
        return channel, created

    async def list(self, principal: Principal) -> list[Channel]:
        return await self.store.list_channels(principal.user_id)

    async def get(self, principal: Principal, channel_id: int) -> Channel:
        return await self.store.get_channel(channel_id, principal.user_id)

    async def rename(self, principal: Principal, channel_id: int, name: str) -> Channel:
        channel, advances = await self.store.rename_channel(channel_id, principal.user_id, check_name(name))
        self.hub.advance(advances)
        return channel

    async def add_members(self, principal: Principal, channel_id: int, user_ids: Sequence[int]) -> Channel:
        channel, advances = await self.store.add_members(
            channel_id, principal.user_id, user_ids, self.max_group_members
        )
        self.hub.advance(advances)
        return channel

    async def remove_member(self, principal: Principal, channel_id: int, user_id: int) -> None:
        advances = await self.store.remove_member(channel_id, principal.user_id, user_id, principal.is_admin)
        self.hub.advance(advances)

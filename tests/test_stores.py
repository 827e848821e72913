"""The store modules against a real database: the send outcome's large-channel flag,
and the channel rules the services hand to the store (refusals write nothing)."""

from __future__ import annotations

import pytest

from chatd.db.stores import Stores
from chatd.errors import Forbidden, Invalid, TooLarge
from chatd.hub import Hub
from chatd.models import ChannelFacts, Principal, SendRequest
from chatd.services.channels import ChannelService
from chatd.services.ratelimit import RateLimiter
from tests.support import admin_group, open_db


async def test_send_outcome_says_large_from_the_channel_size(db_url: str) -> None:
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        ids = [(await stores.users.create(n, n, None, False)).user_id for n in ("ann", "ben", "cal")]
        group = await admin_group(stores, ids[0], "three", ids)

        small = await stores.messages.send(SendRequest(ids[0], group.channel_id, "a", "hi"), inbox_max_members=3)
        assert not small.large and {a.user_id for a in small.advances} == set(ids)

        large = await stores.messages.send(SendRequest(ids[0], group.channel_id, "b", "hi"), inbox_max_members=2)
        assert large.large and large.advances == () and large.ack.seq == 2

        again = await stores.messages.send(SendRequest(ids[0], group.channel_id, "b", "hi"), inbox_max_members=2)
        assert again.ack.duplicate and not again.large and again.ack.seq == 2

        batch = await stores.messages.send_batch(
            [SendRequest(ids[1], group.channel_id, "c", "x"), SendRequest(ids[1], group.channel_id, "d", "y")], 2
        )
        assert [getattr(o, "large", None) for o in batch] == [True, True]
        assert await stores.checks.verify() == []


async def test_a_refusing_rule_rolls_the_change_back(db_url: str) -> None:
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        ids = [(await stores.users.create(n, n, None, False)).user_id for n in ("ann", "ben", "cal")]
        group = await admin_group(stores, ids[0], "g", ids[:2])
        cid = group.channel_id
        heads = [await stores.inbox.head(u) for u in ids]
        seen: list[ChannelFacts] = []

        def refuse(facts: ChannelFacts) -> None:
            seen.append(facts)
            raise Forbidden("no")

        def never_fits(count: int) -> None:
            raise TooLarge(f"{count}")

        with pytest.raises(Forbidden):
            await stores.channels.rename(cid, ids[1], "other", refuse, {"channel_id": cid})
        with pytest.raises(Forbidden):
            await stores.channels.remove_member(cid, ids[1], ids[0], refuse, {"channel_id": cid})
        with pytest.raises(TooLarge, match="3"):  # the count the channel would have had
            await stores.channels.add_members(cid, ids[0], [ids[2]], lambda _: None, never_fits, lambda _: {})
        assert seen == [ChannelFacts(cid, "group", ids[0], 2)] * 2

        after = await stores.channels.get(cid, ids[0])
        assert after.name == "g" and after.members == tuple(ids[:2])
        assert [await stores.inbox.head(u) for u in ids] == heads
        assert await stores.checks.verify() == []


async def test_the_services_rules_refuse_through_the_store(db_url: str) -> None:
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        ids = [(await stores.users.create(n, n, None, False)).user_id for n in ("ann", "ben", "cal")]
        with pytest.raises(TooLarge):
            await admin_group(stores, ids[0], "big", ids, max_members=2)
        assert await stores.channels.summaries() == []

        unlimited = RateLimiter(1000.0, 1000)
        service = ChannelService(stores.channels, Hub(), max_group_members=3, ops=unlimited, invites=unlimited)
        ann, ben = Principal(ids[0], 0, False), Principal(ids[1], 0, False)
        dm, created = await service.open_dm(ann, ids[1])
        assert created
        group = await service.create_group(ann, "g", ids[:2])
        heads = [await stores.inbox.head(u) for u in ids]
        with pytest.raises(Invalid, match="only a group can be renamed"):
            await service.rename(ann, dm.channel_id, "x")
        with pytest.raises(Invalid, match="direct message"):
            await service.add_members(ann, dm.channel_id, [ids[2]])
        with pytest.raises(Forbidden):  # ben neither created the group nor is an admin
            await service.remove_member(ben, group.channel_id, ids[0])
        assert [await stores.inbox.head(u) for u in ids] == heads
        await service.remove_member(ann, group.channel_id, ids[1])  # the creator may
        assert (await stores.channels.get(group.channel_id, ids[0])).members == (ids[0],)
        assert await stores.checks.verify() == []

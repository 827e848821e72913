"""Channels and memberships, created through the public HTTP API (PROTOCOL §2).

Users and tokens come in bulk from benchmarks/seed.py; everything else a
workload needs is made the way a client would make it, so the server's own
code writes the channel rows, members, counts and the ``channel created``
inbox events, and ``chatd verify`` holds afterwards by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import trio

from benchmarks.seed import Credentials

TIMEOUT_S = 60.0


class FixtureError(RuntimeError):
    """The server refused to create a fixture (the run cannot start)."""


def _auth(creds: Credentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {creds['token']}"}


def _channel_id(response: httpx.Response, what: str) -> int:
    if response.status_code not in (200, 201):
        raise FixtureError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return int(body["channel_id"])


async def open_dms(base_url: str, pairs: Sequence[tuple[Credentials, Credentials]], concurrency: int = 8) -> list[int]:
    """``POST /v1/channels {"kind": "dm"}`` for each pair, by its first member; channel ids in order."""
    ids: list[int] = [0] * len(pairs)
    limit = trio.CapacityLimiter(concurrency)

    async def one(client: httpx.AsyncClient, index: int) -> None:
        first, second = pairs[index]
        async with limit:
            r = await client.post(
                "/v1/channels", json={"kind": "dm", "members": [second["user_id"]]}, headers=_auth(first)
            )
        ids[index] = _channel_id(r, f"DM {first['user_id']}-{second['user_id']}")

    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S) as client:
        async with trio.open_nursery() as nursery:
            for index in range(len(pairs)):
                nursery.start_soon(one, client, index)
    return ids


async def create_groups(
    base_url: str, groups: Sequence[Sequence[Credentials]], name: str, concurrency: int = 4
) -> list[int]:
    """``POST /v1/channels {"kind": "group"}`` for each member list, by its first member."""
    ids: list[int] = [0] * len(groups)
    limit = trio.CapacityLimiter(concurrency)

    async def one(client: httpx.AsyncClient, index: int) -> None:
        members = groups[index]
        body = {"kind": "group", "name": f"{name} {index}", "members": [m["user_id"] for m in members[1:]]}
        async with limit:
            r = await client.post("/v1/channels", json=body, headers=_auth(members[0]))
        ids[index] = _channel_id(r, f"group {index} of {len(members)}")

    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S) as client:
        async with trio.open_nursery() as nursery:
            for index in range(len(groups)):
                nursery.start_soon(one, client, index)
    return ids

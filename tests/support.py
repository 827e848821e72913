"""Helpers for tests that talk to a real chatd over real sockets.

``running_server`` starts an in-process :class:`chatd.server.Server` on port 0
against a test database; ``WsClient`` is a real WebSocket client
(trio-websocket) speaking JSON or msgpack; ``Api`` is a real HTTP client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from chatd.config import Config, config_from_mapping
from chatd.db.bridge import Database, open_bridge
from chatd.db.stores import Stores
from chatd.hub import Hub
from chatd.models import Channel
from chatd.server import Server, Services
from chatd.services.auth import AuthService, token_hash
from chatd.services.channels import ChannelService
from chatd.services.ratelimit import RateLimiter


def make_config(db_url: str, overrides: Mapping[str, Mapping[str, object]] | None = None) -> Config:
    data: dict[str, Any] = {
        "node_name": "test-node",
        "server": {"host": "127.0.0.1", "port": 0},
        "database": {"url": db_url, "pool_min": 1, "pool_max": 8},
        # Tests send and change channels fast; the rate limits have their own tests.
        "limits": {
            "send_rate_per_s": 100000,
            "send_burst": 100000,
            "channel_ops_per_min": 1000000,
            "channel_ops_burst": 100000,
            "channel_invites_per_min": 1000000,
            "channel_invites_burst": 100000,
        },
    }
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return config_from_mapping(data)


@attrs.define
class RunningServer:
    url: str
    server: Server

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    @property
    def services(self) -> Services:
        assert self.server.services is not None
        return self.server.services

    @property
    def stores(self) -> Stores:
        return self.services.stores

    async def user(self, name: str, *, admin: bool = False, password: str | None = None) -> ChatUser:
        """Create a user and a device token directly (login has its own tests)."""
        auth: AuthService = self.services.auth
        password_hash = await auth.hash_password(password) if password else None
        user = await self.stores.users.create(name, name.title(), password_hash, admin)
        token, device_id = await auth.issue_token(user.user_id, "test")
        return ChatUser(user.user_id, name, token, device_id)

    async def token(self, user: ChatUser, device_name: str = "second") -> str:
        token, _ = await self.services.auth.issue_token(user.user_id, device_name)
        return token


@attrs.frozen
class ChatUser:
    user_id: int
    name: str
    token: str
    device_id: int


async def admin_group(stores: Stores, creator: int, name: str, members: list[int], max_members: int = 10000) -> Channel:
    """A group created as ``chatd channel create`` does: no principal, no rate limit."""
    unlimited = RateLimiter(1.0, 1)
    channels = ChannelService(stores.channels, Hub(), max_group_members=max_members, ops=unlimited, invites=unlimited)
    return await channels.create_group_for(creator, name, members)


@asynccontextmanager
async def running_server(
    db_url: str, overrides: Mapping[str, Mapping[str, object]] | None = None, *, node_name: str | None = None
) -> AsyncIterator[RunningServer]:
    """An in-process node; ``node_name`` gives a second one on the same database a name of its own."""
    config = make_config(db_url, overrides)
    if node_name is not None:
        config = attrs.evolve(config, node_name=node_name)
    async with open_bridge():
        server = Server(config, db_url)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            try:
                yield RunningServer(url, server)
            finally:
                server.stop()


@asynccontextmanager
async def open_db(db_url: str, *, max_size: int = 4) -> AsyncIterator[Database]:
    async with open_bridge():
        db = await Database.connect(db_url, min_size=1, max_size=max_size)
        try:
            yield db
        finally:
            await db.close()


class Api:
    """An HTTP client bound to one server and (optionally) one token."""

    def __init__(self, client: httpx.AsyncClient, token: str | None = None) -> None:
        self.client = client
        self.token = token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self._headers())

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self._headers(), **kwargs)

    async def patch(self, path: str, body: Any) -> httpx.Response:
        return await self.client.patch(path, json=body, headers=self._headers())

    async def put(self, path: str, body: Any = None) -> httpx.Response:
        return await self.client.put(path, json=body, headers=self._headers())

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(path, headers=self._headers())

    def as_user(self, token: str | None) -> Api:
        return Api(self.client, token)


@asynccontextmanager
async def http(srv: RunningServer, token: str | None = None) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        yield Api(client, token)


class WsClient:
    """A chat client: frames as dicts, in JSON or msgpack."""

    def __init__(self, ws: WebSocketConnection, fmt: str) -> None:
        self.ws = ws
        self.fmt = fmt
        #: Frames read while waiting for a particular answer, returned by recv() first.
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: Mapping[str, Any]) -> None:
        if self.fmt == "msgpack":
            await self.ws.send_message(msgpack.packb(dict(frame)))
        else:
            await self.ws.send_message(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        if isinstance(data, bytes):
            result = msgpack.unpackb(data)
        else:
            result = json.loads(data)
        assert isinstance(result, dict)
        return result

    async def recv_type(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        """The next frame of this type, skipping others."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == kind:
                    return frame

    async def closed_code(self, timeout: float = 10) -> int:
        """Read (and drop) frames until the server closes the connection: its close code."""
        try:
            with trio.fail_after(timeout):
                while True:
                    await self.ws.get_message()
        except ConnectionClosed as closed:
            return int(closed.reason.code)

    async def sync(self, after: int = 0, timeout: float = 10) -> tuple[list[dict[str, Any]], int]:
        """Send sync; collect events until synced: (events, cursor)."""
        await self.send({"type": "sync", "after": after})
        events = []
        with trio.fail_after(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == "event":
                    events.append(frame)
                elif frame["type"] == "synced":
                    return events, frame["cursor"]

    async def send_message(self, channel_id: int, client_msg_id: str, text: str = "hi") -> dict[str, Any]:
        await self.send(
            {"type": "send", "channel_id": channel_id, "client_msg_id": client_msg_id, "text": text, "ref": client_msg_id}
        )
        # The events of the message may come before its ack: keep them for recv().
        kept = []
        try:
            while True:
                frame = await self.recv()
                if frame.get("ref") == client_msg_id and frame["type"] in ("ack", "error"):
                    return frame
                kept.append(frame)
        finally:
            self.pending[:0] = kept


@asynccontextmanager
async def ws_client(
    srv: RunningServer, token: str, *, fmt: str = "json", welcome: bool = True
) -> AsyncIterator[WsClient]:
    subprotocols = [f"chatd.v1.{fmt}"]
    async with open_websocket_url(
        srv.ws_url, extra_headers=[("Authorization", f"Bearer {token}")], subprotocols=subprotocols
    ) as ws:
        client = WsClient(ws, fmt)
        if welcome:
            first = await client.recv()
            assert first["type"] == "welcome", first
        yield client


__all__ = ["running_server", "open_db", "http", "ws_client", "token_hash", "ChatUser", "RunningServer"]

"""Users and their devices (tokens): accounts, login lookups, revocation.

A revocation (a device's, or every device of a user disabled or given a new
password) commits with a ``pg_notify`` hint, so every node closes the live
connections it holds for them (chatd.hints).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chatd import hints
from chatd.db import records
from chatd.db.bridge import Connection, Database
from chatd.errors import Conflict, NotFound
from chatd.models import Credentials, Principal, User

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
WHERE NOT disabled AND id > 0
  AND ($1 = '' OR strpos(lower(username), lower($1)) > 0 OR strpos(lower(display_name), lower($1)) > 0)
ORDER BY username LIMIT $2
"""
#: Id 0 is the system user of the echo probe (migrations/0007_ops.sql): no one's to see.
_ALL_USERS = "SELECT id, username, display_name, is_admin, disabled FROM users WHERE id > 0 ORDER BY id"
#: Presence keeps each user's last frame time in user_presence (migrations/0004_receipts_presence.sql).
_LAST_SEEN = """
SELECT u.id, p.last_seen FROM users u LEFT JOIN user_presence p ON p.user_id = u.id WHERE u.id > 0
"""
_SET_DISABLED = "UPDATE users SET disabled = $2 WHERE lower(username) = lower($1) AND id > 0 RETURNING id"
_REVOKE_USER_DEVICES = "UPDATE devices SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL"
_SET_PASSWORD = "UPDATE users SET password_hash = $2 WHERE lower(username) = lower($1) AND id > 0 RETURNING id"
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


class UserStore:
    """The ``users`` and ``devices`` tables: one method per unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- users -----------------------------------------------------------------

    async def create(self, username: str, display_name: str, password_hash: str | None, is_admin: bool) -> User:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_INSERT_USER, username, display_name, password_hash, is_admin)

        record = await self.db.transaction(unit)
        if record is None:
            raise Conflict(f"user {username!r} already exists")
        return records.user(record)

    async def credentials(self, username: str) -> Credentials | None:
        """The user and its password hash, for login; None when no such user."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_USER_BY_NAME, username)

        record = await self.db.read(unit)
        return None if record is None else Credentials(records.user(record), record["password_hash"])

    async def get(self, user_id: int) -> User:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_USER_BY_ID, user_id)

        record = await self.db.read(unit)
        if record is None:
            raise NotFound("no such user")
        return records.user(record)

    async def search(self, query: str, limit: int) -> list[User]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_SEARCH_USERS, query, limit))

        return [records.user(r) for r in await self.db.read(unit)]

    async def all(self) -> list[User]:
        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_ALL_USERS))

        return [records.user(r) for r in await self.db.read(unit)]

    async def last_seen(self) -> dict[int, datetime | None]:
        """Each user's last frame time (None: never seen)."""

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(_LAST_SEEN))

        return {r["id"]: r["last_seen"] for r in await self.db.read(unit)}

    async def disable(self, username: str) -> int:
        """Disable the user and revoke every token it holds; returns its id."""
        return await self._revoking(_SET_DISABLED, username, True)

    async def set_password(self, username: str, password_hash: str) -> int:
        """Set the password and revoke every token of the user (a leaked
        password's sessions must not outlive the change); returns its id."""
        return await self._revoking(_SET_PASSWORD, username, password_hash)

    async def _revoking(self, update: str, username: str, value: object) -> int:
        """Run ``update`` on the named user, then revoke all its devices, in one transaction."""

        async def unit(conn: Connection) -> int | None:
            user_id = await conn.fetchval(update, username, value)
            if user_id is not None:
                await conn.execute(_REVOKE_USER_DEVICES, user_id)
                await conn.execute(_NOTIFY_REVOKED, hints.encode(hints.UserRevoked(user_id)))
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

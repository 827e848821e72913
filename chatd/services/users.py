"""The user directory: who exists, and the administrator's changes to accounts.

Accounts are created and changed by the administrator (``chatd user ...``);
clients only read (``/v1/me``, ``/v1/users``). Disabling a user or changing
its password revokes every token it holds, on every node.
"""

from __future__ import annotations

from datetime import datetime

from chatd.db.users import UserStore
from chatd.errors import NotFound
from chatd.models import User


class UserService:
    def __init__(self, users: UserStore) -> None:
        self.users = users

    async def get(self, user_id: int) -> User:
        return await self.users.get(user_id)

    async def search(self, query: str, limit: int) -> list[User]:
        """Enabled users whose username or display name contains ``query``, by username."""
        return await self.users.search(query, limit)

    async def by_name(self, username: str) -> User:
        found = await self.users.credentials(username)
        if found is None or found.user.user_id == 0:  # 0: the system user (migrations/0007_ops.sql)
            raise NotFound(f"no such user: {username}")
        return found.user

    async def create(self, username: str, display_name: str, password_hash: str | None, is_admin: bool) -> User:
        return await self.users.create(username, display_name, password_hash, is_admin)

    async def last_seen(self) -> dict[int, datetime | None]:
        return await self.users.last_seen()

    async def all(self) -> list[User]:
        return await self.users.all()

    async def disable(self, username: str) -> int:
        return await self.users.disable(username)

    async def set_password(self, username: str, password_hash: str) -> int:
        return await self.users.set_password(username, password_hash)

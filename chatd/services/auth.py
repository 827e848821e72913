"""Passwords, devices and tokens.

A token is 32 random bytes, URL-safe encoded, shown once; only its SHA-256 is
stored (a token has 256 bits of entropy, so a fast hash is enough, and
lookups stay one index probe). Passwords are argon2id hashes; hashing and
verifying are deliberately slow, so they run in a worker thread and never
stall the event loop.
"""

from __future__ import annotations

import hashlib
import secrets

import argon2
import trio

from chatd.db.store import Store
from chatd.errors import Invalid, Unauthorized
from chatd.hub import Hub
from chatd.models import Principal, User

_hasher = argon2.PasswordHasher()
#: Verified against when the user does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash("chatd-no-such-user")

MAX_PASSWORD_CHARS = 1024
MAX_DEVICE_NAME_CHARS = 100


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_password_sync(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if not password:
        raise Invalid("password: must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise Invalid(f"password: at most {MAX_PASSWORD_CHARS} characters")


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class AuthService:
    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub

    async def hash_password(self, password: str) -> str:
        check_password(password)
        return await trio.to_thread.run_sync(_hasher.hash, password)

    async def login(self, username: str, password: str, device_name: str) -> tuple[str, User, int]:
        """Check the password and open a new device: (token, user, device_id)."""
        if len(password) > MAX_PASSWORD_CHARS:
            raise Unauthorized("bad credentials")
        found = await self.store.user_credentials(username)
        stored = found[1] if found else None
        ok = await trio.to_thread.run_sync(_verify, stored, password)
        if found is None or not ok or found[0].disabled:
            raise Unauthorized("bad credentials")
        token, device_id = await self.issue_token(found[0].user_id, device_name)
        return token, found[0], device_id

    async def issue_token(self, user_id: int, device_name: str) -> tuple[str, int]:
        if not device_name or len(device_name) > MAX_DEVICE_NAME_CHARS:
            raise Invalid(f"device_name: 1..{MAX_DEVICE_NAME_CHARS} characters")
        token = new_token()
        device_id = await self.store.create_device(user_id, device_name, token_hash(token))
        return token, device_id

    async def authenticate(self, token: str | None) -> Principal:
        if not token or len(token) > 256:
            raise Unauthorized("missing or invalid token")
        principal = await self.store.authenticate(token_hash(token))
        if principal is None:
            raise Unauthorized("missing or invalid token")
        return principal

    async def logout(self, principal: Principal) -> None:
        """Revoke the token at once; this node's live connections of the device close too."""
        await self.store.revoke_device(principal.device_id)
        self.hub.revoke_device(principal.device_id)

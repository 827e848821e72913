"""Passwords, devices and tokens.

A token is 32 random bytes, URL-safe encoded, shown once; only its SHA-256 is
stored (a token has 256 bits of entropy, so a fast hash is enough, and
lookups stay one index probe). Passwords are argon2id hashes; hashing and
verifying are deliberately slow, so they run in a worker thread and never
stall the event loop.

Each argon2 run allocates its 64 MiB memory cost, so at most
:data:`HASH_SLOTS` run at once: a flood of logins queues behind them instead
of growing the process by 64 MiB per request (50 concurrent wrong passwords
once took it from 51 MiB to 2.3 GiB), and at most :data:`MAX_LOGINS_QUEUED`
wait (more are answered 429 at once). Failed logins are throttled per
username and per client address (:mod:`chatd.services.login_throttle`), and
a throttled login is refused before any argon2 work, also after it waited
for a slot.

A token is refused once revoked (logout, ``chatd user disable``, ``chatd user
passwd``) or, with ``security.token_ttl_days``, once older than that.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import argon2
import trio

from chatd.db.users import UserStore
from chatd.errors import Invalid, RateLimited, Unauthorized
from chatd.hub import Hub
from chatd.models import Principal, User
from chatd.services.login_throttle import Key, LoginThrottle

_hasher = argon2.PasswordHasher()
#: Verified against when the user does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash("chatd-no-such-user")

MAX_PASSWORD_CHARS = 1024
#: argon2 runs at once per process: each takes 64 MiB (and 4 lanes of CPU).
HASH_SLOTS = max(1, min(2, os.cpu_count() or 1))
#: Logins that may wait for a slot; more at once are refused at once (429).
MAX_LOGINS_QUEUED = 64
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
    def __init__(
        self,
        users: UserStore,
        hub: Hub,
        *,
        login_attempts_per_min: int = 10,
        token_ttl_days: int = 0,
        hash_slots: int = HASH_SLOTS,
    ) -> None:
        self.users = users
        self.hub = hub
        self.token_ttl_days = token_ttl_days
        self.throttle = LoginThrottle(login_attempts_per_min)
        self.hash_slots = trio.Semaphore(hash_slots)
        self._logins_queued = 0

    async def hash_password(self, password: str) -> str:
        check_password(password)
        async with self.hash_slots:
            return await trio.to_thread.run_sync(_hasher.hash, password)

    async def login(
        self, username: str, password: str, device_name: str, client: str | None = None
    ) -> tuple[str, User, int]:
        """Check the password and open a new device: (token, user, device_id).

        ``client`` is the peer address of the connection (None: not throttled
        by address). Raises RateLimited, without hashing, while the username
        or the address is over ``security.login_attempts_per_min`` failures.
        """
        keys: list[Key] = [("user", username.lower())]
        if client:
            keys.append(("addr", client))
        self._check_throttle(keys)
        if len(password) > MAX_PASSWORD_CHARS:
            self.throttle.failed(keys)
            raise Unauthorized("bad credentials")
        found = await self.users.credentials(username)
        stored = found.password_hash if found else None
        if self._logins_queued >= MAX_LOGINS_QUEUED:
            raise RateLimited("too many logins in progress; try again later", 1.0)
        self._logins_queued += 1
        try:
            await self.hash_slots.acquire()
        finally:
            self._logins_queued -= 1
        try:
            self._check_throttle(keys)  # failures counted while this login queued
            ok = await trio.to_thread.run_sync(_verify, stored, password)
        finally:
            self.hash_slots.release()
        if found is None or not ok or found.user.disabled:
            self.throttle.failed(keys)
            raise Unauthorized("bad credentials")
        token, device_id = await self.issue_token(found.user.user_id, device_name)
        return token, found.user, device_id

    def _check_throttle(self, keys: list[Key]) -> None:
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise RateLimited("too many failed logins; try again later", wait)

    async def issue_token(self, user_id: int, device_name: str) -> tuple[str, int]:
        if not device_name or len(device_name) > MAX_DEVICE_NAME_CHARS:
            raise Invalid(f"device_name: 1..{MAX_DEVICE_NAME_CHARS} characters")
        token = new_token()
        device_id = await self.users.create_device(user_id, device_name, token_hash(token))
        return token, device_id

    async def authenticate(self, token: str | None) -> Principal:
        if not token or len(token) > 256:
            raise Unauthorized("missing or invalid token")
        principal = await self.users.authenticate(token_hash(token), self.token_ttl_days)
        if principal is None:
            raise Unauthorized("missing or invalid token")
        return principal

    async def logout(self, principal: Principal) -> None:
        """Revoke the token at once; this node's live connections of the device close too."""
        await self.users.revoke_device(principal.device_id)
        self.hub.revoke_device(principal.device_id)

"""Bulk users and tokens, written straight into the database in one transaction.

Idle and storm runs need tens of thousands of users; creating them one by
one through chatd (a transaction and a bridge crossing each) would take
minutes, and logging in over HTTP would hash a password per user (argon2,
slow by design). So users and devices are inserted in bulk by SQL, which
keeps every stored invariant: a new user has ``inbox_head = 0`` and no inbox
rows, and a device is a row with the SHA-256 of its token. The token format
and its hash are chatd's own (``chatd.services.auth.new_token`` /
``token_hash``), imported here, so this process (a short-lived setup step,
never a load generator) is the one place that imports chatd's server code.

Channels, memberships and messages are not made here: the suite creates them
through the public protocol (HTTP and WebSocket), see benchmarks/fixtures.py.

    python -m benchmarks.seed --dsn DSN --users N --prefix PFX   # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import asyncpg

ROOT = Path(__file__).resolve().parents[1]

_INSERT_USERS = """
INSERT INTO users (username, display_name)
SELECT $1 || i, 'Bench ' || i FROM generate_series(1, $2::int) AS i
RETURNING id
"""
_INSERT_DEVICES = """
INSERT INTO devices (user_id, name, token_hash)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])
"""


class Credentials(TypedDict):
    user_id: int
    token: str


async def seed(dsn: str, users: int, prefix: str) -> list[Credentials]:
    from chatd.services.auth import new_token, token_hash

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            ids = sorted(r["id"] for r in await conn.fetch(_INSERT_USERS, prefix, users))
            tokens = [new_token() for _ in ids]
            await conn.execute(_INSERT_DEVICES, ids, ["bench"] * len(ids), [token_hash(t) for t in tokens])
    finally:
        await conn.close()
    return [{"user_id": uid, "token": tok} for uid, tok in zip(ids, tokens)]


def run(dsn: str, users: int, prefix: str, timeout_s: float = 300.0) -> list[Credentials]:
    """Create ``users`` users with one token each, in a setup process; returns them by id."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.seed", "--dsn", dsn, "--users", str(users), "--prefix", prefix],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding users failed: {done.stderr.strip()[-2000:]}")
    out: list[Any] = json.loads(done.stdout)
    return out


_INSERT_WEBHOOKS = """
INSERT INTO push_subscriptions (user_id, device_id, kind, url)
SELECT d.user_id, d.id, 'webhook', $2 FROM devices d WHERE d.user_id = ANY($1::bigint[])
"""


async def _webhooks(dsn: str, user_ids: list[int], url: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_INSERT_WEBHOOKS, user_ids, url)
    finally:
        await conn.close()


def webhooks(dsn: str, user_ids: list[int], url: str) -> None:
    """One webhook push subscription (``url``) per device of each user, in one statement.

    What ``POST /v1/push/subscriptions`` stores, without N requests of setup:
    on a busy 2-core machine ten thousand of them took many minutes, and a
    subscription's row has no invariant beyond its foreign keys. Runs in the
    calling thread (a setup step, before anything is measured).
    """
    asyncio.run(_webhooks(dsn, user_ids, url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="usernames are PREFIX1..PREFIXn")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(seed(args.dsn, args.users, args.prefix))))


if __name__ == "__main__":
    main()

"""The Trio <-> asyncpg bridge under cancellation: nothing half-done survives.

Seen on this machine: a Trio cancel inside a naive bridged transaction skips
the rollback and poisons the connection, and a cancel during pool acquire
leaks a connection so that closing the pool hangs. These tests cancel at both
points and show the pool whole and nothing committed.
"""

from __future__ import annotations

import pytest
import trio
import trio_asyncio

from chatd.db.bridge import Connection, Database, open_bridge
from chatd.errors import Unavailable
from tests.support import open_db

_CREATE = "CREATE TABLE IF NOT EXISTS bridge_probe (id int PRIMARY KEY)"
_COUNT = "SELECT count(*) FROM bridge_probe"


async def _count(db: Database) -> int:
    async def unit(conn: Connection) -> int:
        return int(await conn.fetchval(_COUNT))

    return await db.read(unit)


async def _setup(db: Database) -> None:
    async def unit(conn: Connection) -> None:
        await conn.execute(_CREATE)

    await db.transaction(unit)


async def test_cancel_mid_transaction_rolls_back_and_keeps_pool_whole(db_url: str) -> None:
    async with open_db(db_url, max_size=2) as db:
        await _setup(db)
        reached = trio.Event()

        async def slow_unit(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (1)")
            reached.set()
            await conn.execute("SELECT pg_sleep(30)")

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await db.transaction(slow_unit)
                    pytest.fail("the unit should have been cancelled")

            nursery.start_soon(run)
            await reached.wait()
            with trio.fail_after(5):
                scope.cancel()
        assert scope.cancelled_caught
        assert await _count(db) == 0, "a cancelled transaction left a row behind"
        # Every connection is back and usable: run as many units as the pool holds, at once.
        async with trio.open_nursery() as nursery:
            for _ in range(db.size()):
                nursery.start_soon(_count, db)
        assert db.idle_connections() == db.size()
        with trio.fail_after(10):
            await db.close()  # would hang on a leaked connection


async def test_cancel_while_waiting_for_a_connection(db_url: str) -> None:
    async with open_db(db_url, max_size=1) as db:
        await _setup(db)
        holding = trio.Event()
        release = trio.Event()

        async def hold(conn: Connection) -> None:
            holding.set()
            await trio_wait(release)

        async def insert(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (2)")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.read, hold)
            await holding.wait()
            with trio.move_on_after(0.3) as waited:
                await db.transaction(insert)  # blocks in acquire: the only connection is held
            assert waited.cancelled_caught
            release.set()
        assert await _count(db) == 0
        assert db.idle_connections() == db.size() == 1
        with trio.fail_after(10):
            await db.close()


async def trio_wait(event: trio.Event) -> None:
    """Wait for a Trio event from inside an asyncio unit (the unit runs in trio-asyncio's loop)."""
    await trio_asyncio.trio_as_aio(event.wait)()


async def test_failed_unit_rolls_back(db_url: str) -> None:
    async with open_db(db_url) as db:
        await _setup(db)

        async def failing(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (3)")
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await db.transaction(failing)
        assert await _count(db) == 0
        assert db.idle_connections() == db.size()


async def test_unreachable_database_is_unavailable(tmp_path: object) -> None:
    async with open_bridge():
        with pytest.raises(Unavailable):
            await Database.connect("postgresql://nobody@127.0.0.1:1/none")

"""The Trio <-> asyncpg bridge under cancellation and failure: nothing half-done survives.

Seen on this machine: a Trio cancel inside a naive bridged transaction skips
the rollback and poisons the connection, and a cancel during pool acquire
leaks a connection so that closing the pool hangs. These tests cancel at both
points, at shutdown with units in flight, and kill the database thread, and
show the pool whole, nothing committed and nothing hanging.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from chatd.db.bridge import Bridge, Connection, Database, DatabaseThreadDied, open_bridge
from chatd.errors import Unavailable
from tests.support import open_db, running_server

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


async def _assert_pool_whole(db: Database) -> None:
    # Every connection is back and usable: run as many units as the pool holds, at once.
    _, size = await db.pool_sizes()
    async with trio.open_nursery() as nursery:
        for _ in range(size):
            nursery.start_soon(_count, db)
    idle, size = await db.pool_sizes()
    assert idle == size


def _db_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chatd-db"]


async def test_cancel_mid_transaction_rolls_back_and_keeps_pool_whole(db_url: str) -> None:
    async with open_db(db_url, max_size=2) as db:
        await _setup(db)
        reached = trio.Event()
        bridge = db._bridge

        async def slow_unit(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (1)")
            bridge.to_trio(reached.set)
            await conn.execute("SELECT pg_sleep(30)")

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def run() -> None:
                with scope:
                    await db.transaction(slow_unit)
                    pytest.fail("the unit should have been cancelled")
                # The caller proceeds only once the rollback and release are done.
                idle, size = await db.pool_sizes()
                assert idle == size, "the cancelled unit's connection was not back yet"

            nursery.start_soon(run)
            await reached.wait()
            with trio.fail_after(5):
                scope.cancel()
        assert scope.cancelled_caught
        assert await _count(db) == 0, "a cancelled transaction left a row behind"
        await _assert_pool_whole(db)
        with trio.fail_after(10):
            await db.close()  # would hang on a leaked connection


async def test_cancel_while_waiting_for_a_connection(db_url: str) -> None:
    async with open_db(db_url, max_size=1) as db:
        await _setup(db)
        bridge = db._bridge
        holding = trio.Event()
        release = asyncio.Event()  # waited on by the unit, on the database thread

        async def hold(conn: Connection) -> None:
            bridge.to_trio(holding.set)
            await release.wait()

        async def insert(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (2)")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.read, hold)
            await holding.wait()
            with trio.move_on_after(0.3) as waited:
                await db.transaction(insert)  # blocks in acquire: the only connection is held
            assert waited.cancelled_caught
            bridge.call_soon(release.set)
        assert await _count(db) == 0
        assert await db.pool_sizes() == (1, 1)
        with trio.fail_after(10):
            await db.close()


async def test_failed_unit_rolls_back(db_url: str) -> None:
    async with open_db(db_url) as db:
        await _setup(db)

        async def failing(conn: Connection) -> None:
            await conn.execute("INSERT INTO bridge_probe VALUES (3)")
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await db.transaction(failing)
        assert await _count(db) == 0
        idle, size = await db.pool_sizes()
        assert idle == size


async def test_shutdown_with_units_in_flight(db_url: str) -> None:
    """Leaving the bridge while units sleep mid-transaction: all roll back, the thread ends."""
    started = 0
    all_started = trio.Event()
    with trio.fail_after(20):
        async with open_bridge() as bridge:
            db = await Database.connect(db_url, min_size=1, max_size=4)
            await _setup(db)

            def one_started() -> None:
                nonlocal started
                started += 1
                if started == 4:
                    all_started.set()

            async def slow_insert(conn: Connection, row: int) -> None:
                await conn.execute("INSERT INTO bridge_probe VALUES ($1)", row)
                bridge.to_trio(one_started)
                await conn.execute("SELECT pg_sleep(30)")

            try:
                async with trio.open_nursery() as nursery:
                    for row in range(10, 14):
                        nursery.start_soon(db.transaction, lambda conn, row=row: slow_insert(conn, row))
                    await all_started.wait()
                    nursery.cancel_scope.cancel()  # what a server stop does to its tasks
                idle, size = await db.pool_sizes()
                assert idle == size == 4
            finally:
                await db.close()
    assert not _db_threads(), "the database thread outlived open_bridge"
    async with open_db(db_url) as db:
        assert await _count(db) == 0


async def test_bridge_refuses_work_after_it_stopped(db_url: str) -> None:
    async with open_bridge() as bridge:
        db = await Database.connect(db_url, min_size=1, max_size=1)
    assert not bridge.alive
    with pytest.raises(Unavailable):
        await _count(db)
    await db.close()  # nothing to close any more: returns


def _kill(bridge: Bridge) -> None:
    def die() -> None:
        raise SystemExit("simulated crash of the database thread")

    bridge.loop.call_soon_threadsafe(die)


async def test_database_thread_dying_stops_the_server_with_one_error(db_url: str) -> None:
    with trio.fail_after(30):
        with pytest.raises(DatabaseThreadDied, match="simulated crash") as caught:
            async with running_server(db_url) as server:
                assert server.server.db is not None
                db = server.server.db
                assert await db.read(lambda conn: conn.fetchval("SELECT 1")) == 1
                bridge = db._bridge
                # Units in flight, from tasks the server does not own, when the thread dies.
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(db.read, lambda conn: conn.execute("SELECT pg_sleep(30)"))
                    await trio.sleep(0.2)
                    _kill(bridge)
                    await trio.sleep_forever()
    assert isinstance(caught.value.__cause__, SystemExit)
    assert not _db_threads()


async def test_database_loop_stopped_by_someone_else_is_a_death(db_url: str) -> None:
    with trio.fail_after(20):
        with pytest.raises(DatabaseThreadDied, match="event loop stopped"):
            async with open_db(db_url) as db:
                db._bridge.loop.call_soon_threadsafe(db._bridge.loop.stop)
                await trio.sleep_forever()


async def test_notifications_reach_trio_in_order(db_url: str) -> None:
    async with open_db(db_url) as db:
        got: list[tuple[int, str]] = []
        trio_thread = threading.get_ident()
        threads: set[int] = set()
        ready = trio.Event()
        enough = trio.Event()

        def on_payload(pid: int, payload: str) -> None:
            threads.add(threading.get_ident())
            got.append((pid, payload))
            if len(got) == 20:
                enough.set()

        async def notify_all(conn: Connection) -> int:
            for i in range(20):
                await conn.execute("SELECT pg_notify('bridge_test', $1)", str(i))
            return int(conn.get_server_pid())

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: db.listen("bridge_test", on_payload, ready.set))
                await ready.wait()
                pid = await db.read(notify_all)
                await enough.wait()
                nursery.cancel_scope.cancel()
        assert [p for _, p in got] == [str(i) for i in range(20)]
        assert {p for p, _ in got} == {pid}
        assert pid in db.backend_pids
        assert threads == {trio_thread}, "a callback ran on the database thread"


async def test_unreachable_database_is_unavailable(tmp_path: object) -> None:
    async with open_bridge():
        with pytest.raises(Unavailable):
            await Database.connect("postgresql://nobody@127.0.0.1:1/none")

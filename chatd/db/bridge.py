"""The Trio <-> asyncpg bridge: the only module that imports trio_asyncio.

asyncpg runs on asyncio, chatd on Trio. trio-asyncio runs one asyncio loop
inside Trio for the life of the process (asyncpg connections belong to the
loop that made them, so the composition root opens it once, around the HTTP
server too, with :func:`open_bridge`).

Every piece of database work is one *unit*: an asyncio coroutine that gets a
connection and returns plain values. :meth:`Database.run` crosses the bridge
once per unit (each crossing costs ~0.4 ms here, against 0.14 ms for a query
in plain asyncio), and does acquire, transaction, statements and release all
on the asyncio side, so Trio never holds half of a transaction.

Cancellation: a Trio cancel cancels the asyncio task and *waits* for it to
finish (trio-asyncio's ``run_aio_future``). Inside the task the rollback and
the release are shielded, so a cancelled unit always rolls back and always
returns its connection; a connection that cannot be rolled back is
terminated, never returned poisoned. A cancel that lands while the pool is
handing out a connection lets the acquire finish and releases it at once
(seen here: a naive cancel during acquire leaks the connection and closing the
pool then hangs).

Resource handling: lower-layer failures (connection refused or lost, server
shutting down, pool closed) are translated here, once, into
:class:`chatd.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg
import trio
import trio_asyncio
from asyncpg.pool import PoolConnectionProxy

from chatd.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:
    Connection = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = PoolConnectionProxy
Unit = Callable[[Connection], Awaitable[T]]

#: How long a rollback after a cancel may take before the connection is
#: terminated instead (it is then replaced by the pool).
ROLLBACK_BOUND_S = 2.0
#: Bound on closing the pool; past it the remaining connections are terminated.
CLOSE_BOUND_S = 5.0
#: Connecting is an edge: a server that does not answer is unavailable.
CONNECT_TIMEOUT_S = 5.0

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionFailureError,
)


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """Open the process's one asyncio loop (call once, around everything)."""
    async with trio_asyncio.open_loop():
        yield


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _keep_session(_conn: Connection) -> None:
    """Pool reset hook: units change no session state, so there is nothing to reset.

    asyncpg's default runs RESET ALL / UNLISTEN * / CLOSE ALL / advisory unlock
    on every release: a round trip per unit that showed as ~8% of the server's
    CPU under load. asyncpg still rolls back an open transaction before this.
    Units must therefore not SET session variables, LISTEN, or take session
    advisory locks (transaction-level ones are fine).
    """


async def _acquire(pool: asyncpg.Pool) -> Connection:
    """pool.acquire() that cannot leak a connection when cancelled."""
    pending = asyncio.ensure_future(pool.acquire())
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        pending.add_done_callback(functools.partial(_release_late, pool))
        raise


def _release_late(pool: asyncpg.Pool, done: asyncio.Future[Connection]) -> None:
    if not done.cancelled() and done.exception() is None:
        asyncio.ensure_future(pool.release(done.result()))


async def _rollback(conn: Connection, tx: Any) -> None:
    """Roll back after a failure or cancel; terminate the connection if that fails."""
    try:
        await asyncio.wait_for(asyncio.shield(tx.rollback()), ROLLBACK_BOUND_S)
    except BaseException:  # noqa: B902 - asyncio side: the connection must not go back dirty
        conn.terminate()


async def _run_unit(pool: asyncpg.Pool, unit: Unit[T], transaction: bool) -> T:
    """The asyncio coroutine of one unit of work: acquire, [transaction], unit, release."""
    conn = await _acquire(pool)
    try:
        if not transaction:
            return await unit(conn)
        tx = conn.transaction()
        await tx.start()
        try:
            result = await unit(conn)
        except BaseException:
            await _rollback(conn, tx)
            raise
        await tx.commit()
        return result
    finally:
        await asyncio.shield(pool.release(conn))


class Database:
    """A pool of asyncpg connections, used from Trio one unit at a time."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, backend_pids: set[int]) -> None:
        self._pool = pool
        self.dsn = dsn
        #: Server pids of this pool's connections: a NOTIFY from one of them came from this node.
        self.backend_pids = backend_pids

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, application_name: str = "chatd"
    ) -> Database:
        """Open the pool (inside :func:`open_bridge`). Raises Unavailable."""
        backend_pids: set[int] = set()

        async def init(conn: Connection) -> None:
            await _init_connection(conn)
            pid = conn.get_server_pid()
            backend_pids.add(pid)
            conn.add_termination_listener(lambda _conn: backend_pids.discard(pid))

        try:
            pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=init,
                reset=_keep_session,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={"application_name": application_name[:63]},
            )
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unreachable: {_describe(exc)}") from exc
        return cls(pool, dsn, backend_pids)

    async def transaction(self, unit: Unit[T]) -> T:
        """Run ``unit`` in one transaction: committed if it returns, rolled back if not."""
        return await self._run(unit, transaction=True)

    async def read(self, unit: Unit[T]) -> T:
        """Run ``unit`` outside an explicit transaction (reads, one statement each)."""
        return await self._run(unit, transaction=False)

    async def _run(self, unit: Unit[T], *, transaction: bool) -> T:
        try:
            result = await trio_asyncio.aio_as_trio(_run_unit)(self._pool, unit, transaction)
            return cast(T, result)
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {_describe(exc)}") from exc

    def idle_connections(self) -> int:
        """Connections in the pool not lent to a unit (tests check none leaks)."""
        return int(self._pool.get_idle_size())

    def size(self) -> int:
        return int(self._pool.get_size())

    async def close(self) -> None:
        """Close the pool (idempotent); connections still busy past CLOSE_BOUND_S are terminated."""
        if self._pool.is_closing():
            return

        async def _close(pool: asyncpg.Pool) -> None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_BOUND_S)
            except asyncio.TimeoutError:
                log.warning("pool did not close within %.1fs; terminating", CLOSE_BOUND_S)
                pool.terminate()

        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(_close)(self._pool)

    async def listen(
        self,
        channel: str,
        on_payload: Callable[[int, str], None],
        on_ready: Callable[[], None],
        *,
        application_name: str = "chatd-listen",
    ) -> None:
        """Hold one dedicated LISTEN connection until cancelled, calling ``on_payload`` per notification.

        ``on_payload`` gets the notifying backend's pid and the payload;
        ``on_ready`` is called once the LISTEN is in place.

        ``on_payload`` runs synchronously in this thread (trio-asyncio runs asyncio
        callbacks inside Trio), so it may use Trio's synchronous APIs. Raises
        Unavailable when the connection is lost; the caller decides to retry.
        """
        lost = trio.Event()

        def _notified(_conn: Any, pid: int, _channel: str, payload: str) -> None:
            on_payload(pid, payload)

        def _terminated(_conn: Any) -> None:
            lost.set()

        try:
            conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(
                self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings={"application_name": application_name[:63]}
            )
        except _UNAVAILABLE as exc:
            raise Unavailable(f"listen connection failed: {_describe(exc)}") from exc
        try:
            conn.add_termination_listener(_terminated)
            await trio_asyncio.aio_as_trio(conn.add_listener)(channel, _notified)
            on_ready()
            await lost.wait()
            raise Unavailable("listen connection lost")
        except _UNAVAILABLE as exc:
            raise Unavailable(f"listen connection failed: {_describe(exc)}") from exc
        finally:
            conn.terminate()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

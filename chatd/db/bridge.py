"""The Trio <-> asyncpg bridge: asyncpg runs on an asyncio loop in a thread of its own.

asyncpg runs on asyncio, chatd on Trio. One asyncio event loop runs in one
dedicated thread (the *database thread*) for as long as :func:`open_bridge`
is open; the composition root opens it once, around the server (asyncpg
connections belong to the loop that made them). Nothing else in chatd knows
the thread exists.

Every piece of database work is one *unit*: an asyncio coroutine that gets a
connection and returns plain values. :meth:`Database.run` crosses the bridge
once per unit: the coroutine is handed to the loop with
``loop.call_soon_threadsafe`` and its outcome handed back with
``TrioToken.run_sync_soon``; acquire, transaction, statements and release all
happen on the asyncio side, so Trio never holds half of a transaction. No
Trio object is touched from the database thread: everything it tells Trio
(outcomes, LISTEN notifications, a lost connection, its own death) goes
through the Trio token.

Cancellation: a Trio cancel cancels the unit's asyncio task
(``loop.call_soon_threadsafe(task.cancel)``) and *waits*, shielded and
bounded, for it to finish. Inside the task the rollback and the release are
shielded, so a cancelled unit has rolled back and returned its connection
before its Trio caller moves on; a connection that cannot be rolled back is
terminated, never returned poisoned. A cancel that lands while the pool is
handing out a connection lets the acquire finish and releases it at once
(seen here: a naive cancel during acquire leaks the connection and closing the
pool then hangs).

Resource handling: lower-layer failures (connection refused or lost, server
shutting down, pool closed, the database thread gone) are translated here,
once, into :class:`chatd.errors.Unavailable`. If the database thread dies,
:func:`open_bridge` cancels its body and raises one
:class:`DatabaseThreadDied`; nothing waits on the dead loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import asyncpg
import trio
from asyncpg.pool import PoolConnectionProxy

from chatd.errors import Unavailable

log = logging.getLogger(__name__)

#: A unit of work (pool wait, statements, commit) slower than this is logged as slow.
SLOW_UNIT_S = 0.5

T = TypeVar("T")
if TYPE_CHECKING:
    Connection = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = PoolConnectionProxy
Unit = Callable[[Connection], Awaitable[T]]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: How long a rollback after a cancel may take before the connection is
#: terminated instead (it is then replaced by the pool).
ROLLBACK_BOUND_S = 2.0
#: Bound on closing the pool; past it the remaining connections are terminated.
CLOSE_BOUND_S = 5.0
#: Connecting is an edge: a server that does not answer is unavailable.
CONNECT_TIMEOUT_S = 5.0
#: How long a cancelled Trio caller waits for its unit's asyncio task to end
#: (rollback and release included) before giving up on it with a warning.
CANCEL_WAIT_BOUND_S = ROLLBACK_BOUND_S + 3.0
#: Bound on stopping the database thread at the end of :func:`open_bridge`.
STOP_BOUND_S = 10.0

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

_current: contextvars.ContextVar[Bridge] = contextvars.ContextVar("chatd_bridge")


class DatabaseThreadDied(Unavailable):
    """The database thread's event loop stopped without being asked to."""


class _BridgeDown(Unavailable):
    """A unit could not run because the database thread is gone or stopping."""


class _Crossing(Generic[T]):
    """One coroutine in flight: started and cancelled on the loop, finished in Trio.

    ``_task`` and ``_cancelled_early`` are touched only on the database
    thread; ``value`` and ``error`` are written there once and read in Trio
    only after ``done`` was set there (through the token, which orders the
    write before the read).
    """

    __slots__ = ("_bridge", "_coro", "_task", "_cancelled_early", "done", "value", "error")

    def __init__(self, bridge: Bridge, coro: Coroutine[Any, Any, T]) -> None:
        self._bridge = bridge
        self._coro: Coroutine[Any, Any, T] | None = coro
        self._task: asyncio.Task[T] | None = None
        self._cancelled_early = False
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    # --- database thread ---------------------------------------------------------------

    def start(self) -> None:
        coro, self._coro = self._coro, None
        assert coro is not None
        if self._cancelled_early:
            coro.close()
            self._finish(None, _BridgeDown("unit cancelled before it started"))
            return
        self._task = asyncio.get_running_loop().create_task(coro)
        self._task.add_done_callback(self._task_done)

    def cancel(self) -> None:
        if self._task is None:
            self._cancelled_early = True
        else:
            self._task.cancel()

    def _task_done(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._finish(None, _BridgeDown("unit cancelled on the database thread"))
        elif (exc := task.exception()) is not None:
            self._finish(None, exc)
        else:
            self._finish(task.result(), None)

    def _finish(self, value: T | None, error: BaseException | None) -> None:
        if self._bridge._dying:
            return  # Trio is told once, by Bridge._thread_ended
        self.value, self.error = value, error
        self._bridge.to_trio(self.done.set)

    # --- Trio ---------------------------------------------------------------------------

    def close_unstarted(self) -> None:
        """The loop never got the coroutine: close it so it is not reported as never awaited."""
        if self._coro is not None:
            self._coro.close()
            self._coro = None


class Bridge:
    """The database thread and its asyncio loop, seen from Trio.

    Create with :func:`open_bridge`. Every method except :meth:`to_trio` and
    the loop-thread halves of :class:`_Crossing` is called from Trio.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, body: trio.CancelScope) -> None:
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._body = body
        self._pending: set[_Crossing[Any]] = set()
        self._stopping = False
        self._dying = False  # database thread only
        self._ended = trio.Event()
        #: Why the thread died (set in Trio, only if it was not asked to stop).
        self.death: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="chatd-db", daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The database thread's loop (for ``call_soon_threadsafe`` only)."""
        return self._loop

    @property
    def alive(self) -> bool:
        return not self._ended.is_set() and not self._stopping

    # --- database thread ---------------------------------------------------------------

    def _main(self) -> None:
        cause: BaseException | None = None
        try:
            self._loop.run_forever()
        except BaseException as exc:  # noqa: B902 - the thread's last word goes to Trio, not to stderr
            cause = exc
        finally:
            if not self._stopping:
                self._last_rites()
            self.to_trio(self._thread_ended, cause)

    def _last_rites(self) -> None:
        """The loop stopped unasked: let what ran on it unwind (roll back, release), if it still can."""
        self._dying = True
        try:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.wait(tasks, timeout=ROLLBACK_BOUND_S))
        except BaseException:  # noqa: B902 - a broken loop stays broken; Trio hears of the death either way
            log.exception("database thread: could not unwind its tasks")

    def to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` soon in the Trio thread (callable from any thread)."""
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    # --- Trio ---------------------------------------------------------------------------

    def _thread_ended(self, cause: BaseException | None) -> None:
        if not self._stopping:
            if cause is None:
                cause = RuntimeError("the event loop stopped")
            self.death = cause
            log.critical("database thread died: %s", _describe(cause), exc_info=cause)
            self._body.cancel()
        self._ended.set()
        for crossing in list(self._pending):
            if not crossing.done.is_set():
                crossing.error = _BridgeDown("database thread is not running")
                crossing.done.set()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the database thread; dropped if the loop is gone."""
        if self._ended.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed
            pass

    async def run(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        on_abandoned: Callable[[T], object] | None = None,
    ) -> T:
        """Run ``fn(*args)`` as one asyncio task on the database thread; return its result.

        Cancellation: a Trio cancel cancels the task and waits (shielded, at
        most CANCEL_WAIT_BOUND_S) for it to end. If it ended with a result
        anyway, ``on_abandoned(result)`` runs on the database thread so a
        connection made for the caller is not leaked.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self.alive:
            raise _BridgeDown("database thread is not running")
        crossing: _Crossing[T] = _Crossing(self, fn(*args))
        self._pending.add(crossing)
        try:
            try:
                self._loop.call_soon_threadsafe(crossing.start, context=contextvars.Context())
            except RuntimeError as exc:  # loop closed under us
                crossing.close_unstarted()
                raise _BridgeDown("database thread is not running") from exc
            try:
                await crossing.done.wait()
            finally:
                if not crossing.done.is_set():
                    await self._abandon(crossing, on_abandoned)
        finally:
            self._pending.discard(crossing)
        if crossing.error is not None:
            if isinstance(crossing.error, _BridgeDown):
                # Dying takes the body down: a cancelled caller sees Cancelled, not this.
                await trio.lowlevel.checkpoint_if_cancelled()
            raise crossing.error
        return crossing.value  # type: ignore[return-value]  # None only when T allows it

    async def _abandon(self, crossing: _Crossing[T], on_abandoned: Callable[[T], object] | None) -> None:
        self.call_soon(crossing.cancel)
        with trio.move_on_after(CANCEL_WAIT_BOUND_S) as waited:
            waited.shield = True
            await crossing.done.wait()
        if waited.cancelled_caught:
            log.warning("a cancelled database unit did not end within %.1fs", CANCEL_WAIT_BOUND_S)
        elif crossing.error is None and on_abandoned is not None:
            self.call_soon(on_abandoned, crossing.value)

    async def _stop(self) -> None:
        """Cancel what is left on the loop, stop it, join the thread (shielded, bounded)."""
        with trio.move_on_after(STOP_BOUND_S) as bounded:
            bounded.shield = True
            if self.alive:
                try:
                    await self.run(_cancel_everything)
                except Unavailable:
                    pass
            self._stopping = True
            self.call_soon(self._loop.stop)
            await self._ended.wait()
            await trio.to_thread.run_sync(self._thread.join)
        if bounded.cancelled_caught:
            log.warning("database thread did not stop within %.1fs", STOP_BOUND_S)
        elif not self._loop.is_running():
            self._loop.close()


async def _cancel_everything() -> None:
    """On the loop, at shutdown: cancel every other task and let it unwind (bounded)."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_BOUND_S / 2)
    await asyncio.get_running_loop().shutdown_asyncgens()


def default_loop_factory() -> asyncio.AbstractEventLoop:
    """uvloop when installed (``pip install 'chatd[uvloop]'``), else asyncio's own loop.

    Measured with benchmarks/bridge.py (50 Trio tasks, ``SELECT 1`` units, 10
    connections): uvloop on the database thread cuts CPU per unit by about 40%.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@asynccontextmanager
async def open_bridge(loop_factory: LoopFactory | None = None) -> AsyncIterator[Bridge]:
    """Start the database thread for the body; stop it after.

    :meth:`Database.connect` inside the body uses it. If the thread dies, the
    body is cancelled and this raises :class:`DatabaseThreadDied` once.
    """
    loop = (loop_factory or default_loop_factory)()
    with trio.CancelScope() as body:
        bridge = Bridge(loop, body)
        bridge._thread.start()
        reset = _current.set(bridge)
        try:
            yield bridge
        finally:
            _current.reset(reset)
            await bridge._stop()
    if bridge.death is not None:
        raise DatabaseThreadDied(f"database thread died: {_describe(bridge.death)}") from bridge.death


def current_bridge() -> Bridge:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no database thread: call this inside `async with open_bridge()`") from None


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _keep_session(_conn: asyncpg.Connection[Any]) -> None:
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


class _Pids:
    """Server pids of a pool's connections: written on the database thread, read in Trio."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def snapshot(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pids)


async def _pool_sizes(pool: asyncpg.Pool) -> tuple[int, int]:
    return int(pool.get_idle_size()), int(pool.get_size())


class Database:
    """A pool of asyncpg connections, used from Trio one unit at a time."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, pids: _Pids, bridge: Bridge) -> None:
        self._pool = pool
        self.dsn = dsn
        self._pids = pids
        self._bridge = bridge
        self._closed = False

    @property
    def backend_pids(self) -> frozenset[int]:
        """Server pids of this pool's connections: a NOTIFY from one of them came from this node."""
        return self._pids.snapshot()

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, application_name: str = "chatd"
    ) -> Database:
        """Open the pool (inside :func:`open_bridge`). Raises Unavailable."""
        bridge = current_bridge()
        pids = _Pids()

        async def init(conn: asyncpg.Connection[Any]) -> None:  # on the database thread
            await _init_connection(conn)
            pid = conn.get_server_pid()
            pids.add(pid)
            conn.add_termination_listener(lambda _conn: pids.discard(pid))

        async def create() -> asyncpg.Pool:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=init,
                reset=_keep_session,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={"application_name": application_name[:63]},
            )
            return pool

        try:
            pool = await bridge.run(create, on_abandoned=lambda p: p.terminate())
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unreachable: {_describe(exc)}") from exc
        return cls(pool, dsn, pids, bridge)

    async def transaction(self, unit: Unit[T]) -> T:
        """Run ``unit`` in one transaction: committed if it returns, rolled back if not."""
        return await self._run(unit, transaction=True)

    async def read(self, unit: Unit[T]) -> T:
        """Run ``unit`` outside an explicit transaction (reads, one statement each)."""
        return await self._run(unit, transaction=False)

    async def statement(self, unit: Unit[T]) -> T:
        """Run ``unit``, a write of exactly ONE statement, with no BEGIN/COMMIT around it:
        PostgreSQL runs a lone statement as its own transaction (all of it or none), and
        the unit costs one round trip instead of three."""
        return await self._run(unit, transaction=False)

    async def _run(self, unit: Unit[T], *, transaction: bool) -> T:
        started = time.perf_counter()
        try:
            return await self._bridge.run(_run_unit, self._pool, unit, transaction)
        except _UNAVAILABLE as exc:
            raise Unavailable(f"database unavailable: {_describe(exc)}") from exc
        finally:
            if (took := time.perf_counter() - started) > SLOW_UNIT_S:
                log.info("slow %s: %s took %.3fs (pool wait included)",
                            "transaction" if transaction else "read", unit.__qualname__, took)

    async def pool_sizes(self) -> tuple[int, int]:
        """(idle, total) connections: idle ones are not lent to a unit (tests check none leaks)."""
        return await self._bridge.run(_pool_sizes, self._pool)

    async def close(self) -> None:
        """Close the pool (idempotent); connections still busy past CLOSE_BOUND_S are terminated.

        Cancellation: shielded. With the database thread gone there is nothing to close.
        """
        if self._closed:
            return
        self._closed = True

        async def _close(pool: asyncpg.Pool) -> None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_BOUND_S)
            except asyncio.TimeoutError:
                log.warning("pool did not close within %.1fs; terminating", CLOSE_BOUND_S)
                pool.terminate()

        with trio.CancelScope(shield=True):
            try:
                await self._bridge.run(_close, self._pool)
            except _BridgeDown:
                pass

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
        ``on_ready`` is called once the LISTEN is in place. Both run in the
        Trio thread (notifications arrive on the database thread and are
        handed over through the Trio token, in order), so they may use Trio's
        synchronous APIs. Raises Unavailable when the connection is lost; the
        caller decides to retry.
        """
        bridge = self._bridge
        lost = trio.Event()

        def _deliver(pid: int, payload: str) -> None:  # in Trio, as a run_sync_soon callback
            try:
                on_payload(pid, payload)
            except Exception:  # a crash here would take the whole Trio run down
                log.exception("notification handler failed")

        def _notified(_conn: object, pid: int, _channel: str, payload: object) -> None:  # database thread
            bridge.to_trio(_deliver, pid, str(payload))

        def _terminated(_conn: Any) -> None:  # database thread
            bridge.to_trio(lost.set)

        async def _connect() -> asyncpg.Connection[Any]:
            conn: asyncpg.Connection[Any] = await asyncpg.connect(
                self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings={"application_name": application_name[:63]}
            )
            conn.add_termination_listener(_terminated)
            try:
                await conn.add_listener(channel, _notified)
            except BaseException:  # noqa: B902 - asyncio side: never leave the connection open
                conn.terminate()
                raise
            return conn

        try:
            conn = await bridge.run(_connect, on_abandoned=lambda c: c.terminate())
        except _UNAVAILABLE as exc:
            raise Unavailable(f"listen connection failed: {_describe(exc)}") from exc
        try:
            on_ready()
            await lost.wait()
            raise Unavailable("listen connection lost")
        finally:
            bridge.call_soon(conn.terminate)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

"""Micro-benchmark of the Trio <-> asyncpg crossing: what one unit of work costs.

50 tasks each run ``SELECT 1`` as one unit (acquire, statement, release:
chatd's own ``_run_unit``) through a 10-connection asyncpg pool, for a fixed
time, in each of these ways:

- ``asyncio``: plain asyncio tasks, no Trio at all (the floor);
- ``thread``: Trio tasks through chatd's bridge (the database thread);
- ``thread-uvloop``: the same with uvloop on the database thread (if installed);
- ``trio-asyncio``: Trio tasks through trio-asyncio, the bridge chatd used
  before (if installed).

Each way runs in a fresh process of its own (importing trio_asyncio slows
asyncio in the whole process), the ways alternate, and each is measured
``--repeat`` times; the table gives the medians of process CPU per call (all
threads) and calls/s.

    python -m benchmarks.bridge [--dsn postgresql://...] [--seconds 3] [--repeat 3]

With no ``--dsn`` it starts an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKS = 50
POOL = 10
WAYS = ("asyncio", "thread", "thread-uvloop", "trio-asyncio")


async def _select_one(conn: Any) -> int:
    return int(await conn.fetchval("SELECT 1"))


def _measure_asyncio(dsn: str, seconds: float) -> tuple[int, float, float]:
    import asyncpg

    from chatd.db.bridge import _run_unit

    async def main() -> tuple[int, float, float]:
        pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL)
        calls = 0
        stop = False

        async def worker() -> None:
            nonlocal calls
            while not stop:
                await _run_unit(pool, _select_one, False)
                calls += 1

        tasks = [asyncio.create_task(worker()) for _ in range(TASKS)]
        await asyncio.sleep(0.5)  # warm up: statement caches, connections
        calls = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        n, cpu, wall = calls, time.process_time() - cpu0, time.perf_counter() - wall0
        stop = True
        await asyncio.gather(*tasks)
        await pool.close()
        return n, cpu, wall

    return asyncio.run(main())


def _measure_trio(dsn: str, seconds: float, way: str) -> tuple[int, float, float]:
    import trio

    from chatd.db.bridge import Database, _run_unit, open_bridge

    if way == "trio-asyncio":
        import asyncpg
        import trio_asyncio

        async def main() -> tuple[int, float, float]:
            async with trio_asyncio.open_loop():
                pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(dsn, min_size=POOL, max_size=POOL)

                async def call() -> None:
                    await trio_asyncio.aio_as_trio(_run_unit)(pool, _select_one, False)

                try:
                    return await _drive(call, seconds)
                finally:
                    await trio_asyncio.aio_as_trio(pool.close)()

        return trio.run(main)

    factory: Any = asyncio.new_event_loop  # not the default factory: that picks uvloop when installed
    if way == "thread-uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    async def main_thread() -> tuple[int, float, float]:
        async with open_bridge(factory):
            db = await Database.connect(dsn, min_size=POOL, max_size=POOL)

            async def call() -> None:
                await db.read(_select_one)

            try:
                return await _drive(call, seconds)
            finally:
                await db.close()

    return trio.run(main_thread)


async def _drive(call: Any, seconds: float) -> tuple[int, float, float]:
    import trio

    calls = 0
    stop = False

    async def worker() -> None:
        nonlocal calls
        while not stop:
            await call()
            calls += 1

    async with trio.open_nursery() as nursery:
        for _ in range(TASKS):
            nursery.start_soon(worker)
        await trio.sleep(0.5)
        calls = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await trio.sleep(seconds)
        result = calls, time.process_time() - cpu0, time.perf_counter() - wall0
        stop = True  # not a cancel: trio-asyncio mishandles a cancel mid-unit (a double release)
    return result


def _available(way: str) -> bool:
    module = {"thread-uvloop": "uvloop", "trio-asyncio": "trio_asyncio"}.get(way)
    return module is None or importlib.util.find_spec(module) is not None


def _one(way: str, dsn: str, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bridge", "--child", way, "--dsn", dsn, "--seconds", str(seconds)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{way} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _table(dsn: str, seconds: float, repeat: int) -> None:
    ways = [w for w in WAYS if _available(w)]
    runs: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for _ in range(repeat):
        for way in ways:
            runs[way].append(_one(way, dsn, seconds))
    print(f"{TASKS} tasks, SELECT 1 per unit, {POOL}-connection pool, {seconds:g} s x {repeat} per way (medians)")
    print(f"{'way':<14} {'CPU ms/call':>12} {'calls/s':>9}   runs (ms/call; calls/s)")
    for way in ways:
        ms = [r["cpu_ms_per_call"] for r in runs[way]]
        rate = [r["calls_per_s"] for r in runs[way]]
        detail = ", ".join(f"{m:.3f}; {c:,.0f}" for m, c in zip(ms, rate))
        print(f"{way:<14} {statistics.median(ms):>12.3f} {statistics.median(rate):>9,.0f}   {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("CHATD_DATABASE_URL", ""))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "asyncio":
            n, cpu, wall = _measure_asyncio(args.dsn, args.seconds)
        else:
            n, cpu, wall = _measure_trio(args.dsn, args.seconds, args.child)
        print(json.dumps({"calls": n, "cpu_ms_per_call": cpu * 1000 / n, "calls_per_s": n / wall}))
        return
    if args.dsn:
        _table(args.dsn, args.seconds, args.repeat)
        return
    from benchmarks.database import wheel_bin_dir
    from chatd.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedPostgres(Path(tmp) / "pg", bin_dir=wheel_bin_dir() or None)
        dsn = embedded.acquire()
        try:
            _table(dsn, args.seconds, args.repeat)
        finally:
            embedded.release()


if __name__ == "__main__":
    main()

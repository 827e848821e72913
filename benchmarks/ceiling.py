"""The PostgreSQL ceiling: what the same database does for plain, durable inserts.

Every chatd figure is reported beside the limit it could approach on the
same machine and the same PostgreSQL, measured in the same run:

- single-row durable INSERTs per second (one transaction, one fsync each)
  from one connection and from eight (PostgreSQL shares fsyncs between
  concurrent commits);
- rows per second of batched inserts, ``INSERT ... SELECT unnest($1)`` with
  100 rows per transaction, from one connection and from eight.

It runs as its own process, in plain asyncio with plain asyncpg, and never
imports trio_asyncio: merely importing it makes asyncio code ~2.8x slower per
call, which would understate the ceiling. The table is a logged (not TEMP,
not UNLOGGED) table, so each commit writes and flushes WAL like chatd's.

    python -m benchmarks.ceiling --dsn postgresql://... --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
BATCH_ROWS = 100
CONNECTIONS = 8
BODY = "x" * 64


async def _single_rows(pool: asyncpg.Pool, table: str, connections: int, seconds: float) -> float:
    """Transactions per second: each INSERT of one row is its own durable commit."""
    statement = f"INSERT INTO {table} (body) VALUES ($1)"
    deadline = time.perf_counter() + seconds

    async def loop() -> int:
        n = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                await conn.execute(statement, BODY)
                n += 1
        return n

    started = time.perf_counter()
    counts = await asyncio.gather(*(loop() for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - started)


async def _batched_rows(pool: asyncpg.Pool, table: str, connections: int, seconds: float) -> float:
    """Rows per second, BATCH_ROWS rows per transaction."""
    statement = f"INSERT INTO {table} (body) SELECT unnest($1::text[])"
    rows = [BODY] * BATCH_ROWS
    deadline = time.perf_counter() + seconds

    async def loop() -> int:
        n = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                await conn.execute(statement, rows)
                n += BATCH_ROWS
        return n

    started = time.perf_counter()
    counts = await asyncio.gather(*(loop() for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - started)


async def measure(dsn: str, seconds: float) -> dict[str, Any]:
    table = f"bench_ceiling_{os.getpid()}"
    pool = await asyncpg.create_pool(dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, body text NOT NULL)")
            version = await conn.fetchval("SHOW server_version")
            sync = await conn.fetchval("SHOW synchronous_commit")
            fsync = await conn.fetchval("SHOW fsync")
        try:
            result: dict[str, Any] = {
                "single_insert_tx_per_s_1conn": round(await _single_rows(pool, table, 1, seconds)),
                "single_insert_tx_per_s_8conn": round(await _single_rows(pool, table, CONNECTIONS, seconds)),
                "batched_insert_rows_per_s_1conn": round(await _batched_rows(pool, table, 1, seconds)),
                "batched_insert_rows_per_s_8conn": round(await _batched_rows(pool, table, CONNECTIONS, seconds)),
            }
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE {table}")
    finally:
        await pool.close()
    result.update(
        batch_rows=BATCH_ROWS,
        seconds_each=seconds,
        postgres_version=version,
        synchronous_commit=sync,
        fsync=fsync,
    )
    # The point of running apart: a ceiling measured under trio_asyncio would be too low.
    assert "trio_asyncio" not in sys.modules, "the ceiling process must not import trio_asyncio"
    return result


def run(dsn: str, seconds: float, timeout_s: float = 120.0) -> dict[str, Any]:
    """Measure in a fresh process (see the module docstring) and return its figures."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ceiling", "--dsn", dsn, "--seconds", str(seconds)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ceiling measurement failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (four of them)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.dsn, args.seconds))))


if __name__ == "__main__":
    main()

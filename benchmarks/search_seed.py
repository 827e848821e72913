"""Bulk channels and messages for the search benchmark, written with COPY.

A million messages through the API would take the run's whole budget, so
this setup step writes them straight into the tables, keeping every stored
invariant ``chatd verify`` checks: each channel's messages are seq 1..N with
``last_seq = N``, ``member_count`` matches the members rows, and no inbox rows
are written (nothing points to a message; users' ``inbox_head`` stays 0).

Texts are 6..14 words drawn from a fixed vocabulary with Zipf-like
frequencies (a few words in a large share of the messages, most words rare),
from a seeded generator, so runs are comparable. The search index is dropped
for the COPY and built once afterwards (much faster than maintaining a GIN
index row by row); the time of each step is reported.

    python -m benchmarks.search_seed --dsn DSN --owners 1,2 --searcher 3 --channels 1000 --messages 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

VOCABULARY = 20_000
SEED = 20261130
#: Queries are drawn from these ranks of the vocabulary (0 = the most frequent word).
COMMON_RANKS = range(0, 5)
MEDIUM_RANKS = range(200, 400)
RARE_RANKS = range(15_000, 20_000)
BATCH = 50_000

_CREATE_INDEX = "CREATE INDEX messages_search_idx ON messages USING gin (search)"
_DROP_INDEX = "DROP INDEX IF EXISTS messages_search_idx"


def vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))))
    return sorted(words, key=lambda w: rng.random())


async def seed(dsn: str, owners: list[int], searcher: int, channels: int, messages: int, member_of: int) -> dict[str, Any]:
    rng = random.Random(SEED)
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        ids = [r["id"] for r in await conn.fetch(
            """INSERT INTO channels (kind, name, created_by, member_count, last_seq)
               SELECT 'group', 'search ' || i, ($1::bigint[])[1 + (i % cardinality($1::bigint[]))], 1, 0
               FROM generate_series(0, $2 - 1) AS i RETURNING id""", owners, channels)]
        ids.sort()
        creator = {cid: owners[i % len(owners)] for i, cid in enumerate(ids)}
        mine = ids[:: max(1, channels // member_of)][:member_of]
        member_rows = [(cid, creator[cid]) for cid in ids] + [(cid, searcher) for cid in mine if creator[cid] != searcher]
        await conn.copy_records_to_table("members", records=member_rows, columns=["channel_id", "user_id"])
        await conn.execute("""UPDATE channels c SET member_count = (SELECT count(*) FROM members m WHERE m.channel_id = c.id)
                              WHERE c.id = ANY($1::bigint[])""", ids)
        timings["channels_s"] = round(time.monotonic() - started, 2)

        started = time.monotonic()
        await conn.execute(_DROP_INDEX)
        per_channel = [messages // channels + (1 if i < messages % channels else 0) for i in range(channels)]
        base = datetime.now(timezone.utc) - timedelta(days=30)
        step = timedelta(days=30) / max(1, messages)
        rows: list[tuple[Any, ...]] = []
        n = 0
        # Interleave channels so that created_at (search's order) mixes them as real traffic would.
        seqs = [0] * channels
        remaining = list(range(channels))
        while remaining:
            next_round = []
            for i in remaining:
                seqs[i] += 1
                cid = ids[i]
                text = " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 14)))
                rows.append((cid, seqs[i], creator[cid], f"b{cid}-{seqs[i]}", text, base + step * n))
                n += 1
                if seqs[i] < per_channel[i]:
                    next_round.append(i)
                if len(rows) >= BATCH:
                    await conn.copy_records_to_table(
                        "messages", records=rows,
                        columns=["channel_id", "seq", "sender_id", "client_msg_id", "text", "created_at"])
                    rows = []
            remaining = next_round
        if rows:
            await conn.copy_records_to_table(
                "messages", records=rows, columns=["channel_id", "seq", "sender_id", "client_msg_id", "text", "created_at"])
        await conn.execute("""UPDATE channels c SET last_seq = t.n FROM unnest($1::bigint[], $2::bigint[]) AS t (id, n)
                              WHERE c.id = t.id""", ids, per_channel)
        timings["copy_messages_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        await conn.execute(_CREATE_INDEX)
        timings["build_gin_index_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        await conn.execute("ANALYZE channels; ANALYZE members; ANALYZE messages")
        timings["analyze_s"] = round(time.monotonic() - started, 2)
        size = await conn.fetchval("SELECT pg_relation_size('messages_search_idx')")
    finally:
        await conn.close()
    return {
        "channels": ids,
        "searcher_channels": mine,
        "timings": timings,
        "gin_index_bytes": size,
        "queries": {
            "common": [words[r] for r in COMMON_RANKS],
            "medium": [words[r] for r in MEDIUM_RANKS],
            "rare": [words[r] for r in RARE_RANKS],
        },
    }


async def set_index(dsn: str, present: bool) -> float:
    """Create or drop the search index; the seconds it took."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await conn.execute(_CREATE_INDEX if present else _DROP_INDEX)
        return time.monotonic() - started
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--owners", required=True, help="user ids, comma-separated: the channels' creators and senders")
    parser.add_argument("--searcher", type=int, required=True)
    parser.add_argument("--channels", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--member-of", type=int, required=True)
    args = parser.parse_args()
    owners = [int(x) for x in args.owners.split(",")]
    print(json.dumps(asyncio.run(seed(args.dsn, owners, args.searcher, args.channels, args.messages, args.member_of))))


if __name__ == "__main__":
    main()

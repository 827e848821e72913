"""Search: full-text query latency over a large history, and what the index costs the send path.

Seeds ``--messages`` (1,000,000) messages in ``--channels`` (1,000) groups
with COPY (benchmarks/search_seed.py), the searcher a member of
``--member-of`` (20) of them, then:

1. **Search latency**: ``GET /v1/search`` one query at a time (closed loop,
   one client), ``--queries`` per kind: a rare word, a medium word, a common
   word (in most messages), a two-word phrase, and a medium word within one
   channel (``channel_id=``). p50/p99/p99.9 per kind, hits per answer.
2. **Send saturation with and without the search index, same run**:
   ``--senders`` closed-loop WebSocket senders (send, wait for the ack, send
   again) into their own DMs for ``--phase-seconds``, alternating
   with index / without / with / without (``DROP INDEX`` / ``CREATE INDEX``
   between phases), so drift on a shared machine hits both alike. The
   tsvector column is computed in both (it is part of the row); only the GIN
   index's maintenance is what the comparison isolates.

The senders run in this (orchestrating) process, not in worker processes:
the figure is the relative cost, measured the same way on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks import search_seed
from benchmarks.clients import Client, message_text
from benchmarks.fixtures import open_dms
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workloads.common import AckBook, close_all, connect_all, problems, sleep_until

HELP = "search p50/p99 over a large seeded history, and send saturation with and without the search index"
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("rare", "medium", "common", "phrase", "in_channel")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=1_000_000, help="messages seeded (default 1,000,000)")
    p.add_argument("--channels", type=int, default=1000, help="channels seeded (default 1,000)")
    p.add_argument("--member-of", type=int, default=20, help="channels the searcher is a member of (default 20)")
    p.add_argument("--queries", type=int, default=200, help="queries per kind (default 200)")
    p.add_argument("--senders", type=int, default=32, help="closed-loop senders in the saturation phases (default 32)")
    p.add_argument("--phase-seconds", type=float, default=10.0, help="length of each saturation phase (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="with/without rounds (default 2)")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {}


def _seed(dsn: str, owners: list[int], searcher: int, args: argparse.Namespace) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_seed", "--dsn", dsn, "--owners", ",".join(map(str, owners)),
         "--searcher", str(searcher), "--channels", str(args.channels), "--messages", str(args.messages),
         "--member-of", str(args.member_of)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=7200,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding messages failed: {done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


async def _set_index(dsn: str, present: bool) -> float:
    return await trio.to_thread.run_sync(lambda: asyncio.run(search_seed.set_index(dsn, present)))


def _queries(kind: str, seeded: dict[str, Any], rng: random.Random, n: int) -> list[dict[str, Any]]:
    words = seeded["queries"]
    channels = seeded["searcher_channels"]
    out = []
    for _ in range(n):
        if kind == "phrase":
            q: dict[str, Any] = {"q": f'"{rng.choice(words["common"])} {rng.choice(words["medium"])}"'}
        elif kind == "in_channel":
            q = {"q": rng.choice(words["medium"]), "channel_id": rng.choice(channels)}
        else:
            q = {"q": rng.choice(words[kind])}
        out.append({**q, "limit": 50})
    return out


async def _search_latency(url: str, token: str, seeded: dict[str, Any], n: int) -> dict[str, Any]:
    rng = random.Random(7)
    figures: dict[str, Any] = {}
    allowed = set(seeded["searcher_channels"])
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        for kind in KINDS:
            latency, hits, leaks, errors = Histogram(), 0, 0, 0
            for params in _queries(kind, seeded, rng, n):
                started = time.monotonic()
                r = await client.get("/v1/search", params=params)
                latency.add(time.monotonic() - started)
                if r.status_code != 200:
                    errors += 1
                    continue
                results = r.json()["results"]
                hits += len(results)
                leaks += sum(1 for m in results if m["channel_id"] not in allowed)
            figures[kind] = {"latency_ms": latency.summary_ms(), "mean_hits": round(hits / max(1, n), 1),
                             "leaks": leaks, "errors": errors}
    return figures


async def _saturation_phase(clients: list[tuple[Client, int]], seconds: float, tag: str) -> dict[str, Any]:
    book = AckBook()
    for client, _ in clients:
        client.on_ack = book.on_ack
    start = time.monotonic() + 0.2
    stop = start + seconds
    book.window = (start, stop)
    counter = [0]

    async def loop(client: Client, channel: int) -> None:
        await sleep_until(start)
        while time.monotonic() < stop:
            counter[0] += 1
            due = time.monotonic()
            if not await client.send_and_wait(channel, f"{tag}-{counter[0]}", message_text(due, "search bench"), due):
                return

    async with trio.open_nursery() as nursery:
        for client, channel in clients:
            nursery.start_soon(loop, client, channel)
    return {"acked_msg_per_s": round(book.in_window / seconds, 1), "send_ack_ms": book.latency.summary_ms()}


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(1 + 20 + 2 * args.senders)
    searcher, owners, senders = users[0], users[1:21], users[21:]
    seeded = await trio.to_thread.run_sync(_seed, ctx.dsn, [o["user_id"] for o in owners], searcher["user_id"], args)
    figures: dict[str, Any] = {"seeding": seeded["timings"], "gin_index_mb": round(seeded["gin_index_bytes"] / 2**20, 1)}

    async with ctx.window(None) as window:
        figures["search"] = await _search_latency(ctx.server.url, searcher["token"], seeded, args.queries)
    figures["search_server"] = window.figures()

    pairs = [(senders[i], senders[i + 1]) for i in range(0, len(senders), 2)]
    channels = await open_dms(ctx.server.url, pairs)
    clients = [(Client(ctx.server.ws_url, a["user_id"], a["token"]), ch) for (a, _), ch in zip(pairs, channels)]
    phases: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        await connect_all([c for c, _ in clients], nursery)
        present = True
        for i in range(2 * args.rounds):
            async with ctx.window(None) as window:
                phase = await _saturation_phase(clients, args.phase_seconds, f"{ctx.tag}-p{i}")
            phase["index"] = present
            phase["server"] = window.figures()
            phases.append(phase)
            present = not present
            phase["index_toggle_s"] = round(await _set_index(ctx.dsn, present), 2)
        figures["client_problems"] = problems(c for c, _ in clients)
        await close_all(c for c, _ in clients)
        nursery.cancel_scope.cancel()
    if not present:
        await _set_index(ctx.dsn, True)
    figures["saturation_phases"] = phases

    def mean(index: bool) -> float:
        rates = [p["acked_msg_per_s"] for p in phases if p["index"] is index]
        return round(sum(rates) / len(rates), 1)

    figures["saturation_with_index_msg_per_s"] = mean(True)
    figures["saturation_without_index_msg_per_s"] = mean(False)
    leaks = sum(f["leaks"] for f in figures["search"].values())
    errors = sum(f["errors"] for f in figures["search"].values())
    correctness: dict[str, Any] = {"lost": 0, "duplicated": 0, "out_of_order": 0, "criteria_failed": []}
    if leaks:
        correctness["criteria_failed"].append(f"{leaks} search hits from channels the searcher is not in")
    if errors:
        correctness["criteria_failed"].append(f"{errors} searches answered an error")

    rows = [
        ("scale", f"{args.messages:,} messages in {args.channels:,} channels; searcher in {args.member_of}"),
        ("seeding (COPY / GIN build / analyze)",
         f"{fmt(seeded['timings']['copy_messages_s'])} / {fmt(seeded['timings']['build_gin_index_s'])} / "
         f"{fmt(seeded['timings']['analyze_s'])} s; GIN index {figures['gin_index_mb']} MB"),
    ]
    for kind in KINDS:
        f = figures["search"][kind]
        rows.append((f"search {kind}: p50 / p99 / p99.9", f"{ms(f['latency_ms'], 'p50', 'p99', 'p99.9')}, "
                                                          f"{f['mean_hits']} hits per answer"))
    for p in phases:
        rows.append((f"  send saturation, index {'on ' if p['index'] else 'off'}",
                     f"{fmt(p['acked_msg_per_s'])} msg/s, ack p50/p99 {ms(p['send_ack_ms'], 'p50', 'p99')}, "
                     f"server CPU {fmt(p['server']['server_cpu_pct'])} %"))
    rows.append(("send saturation with / without index (mean)",
                 f"{fmt(figures['saturation_with_index_msg_per_s'])} / "
                 f"{fmt(figures['saturation_without_index_msg_per_s'])} msg/s"))
    params = {k: getattr(args, k) for k in ("messages", "channels", "member_of", "queries", "senders",
                                            "phase_seconds", "rounds")}
    notes = [f"{args.senders} senders in the orchestrating process; the machine is shared and noisy"]
    return Outcome(params, figures, correctness, rows, phases[-1]["server"], notes)


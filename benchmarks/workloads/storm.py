"""Reconnect storm: N clients, each K events behind, reconnect at once and catch up.

Setup: N users (bulk), in groups of ``--group-size`` created over HTTP (each
member's inbox then holds one event, the group's creation: inbox_seq 1, the
cursor every client is assumed to have saved before going offline). Then the
backlog, through the protocol: one member of each group sends K messages
(pipelined, all acknowledged), so every member is exactly K events behind.

The storm: at one instant every client starts, after a random delay of up to
``--jitter`` seconds (the jitter real clients add), to connect and ``sync``
from cursor 1; a refused or failed attempt is retried with exponential,
jittered backoff, and a connection lost half-way resumes from the last
applied inbox_seq. A client is caught up when ``synced`` arrives; it then
stays connected (heartbeating) until all are done.

Figures: time until every client is caught up, per-client catch-up time
p50/p99, failed attempts, events delivered per second over the storm, server
CPU and peak RSS. Correctness: each client got inbox_seq 2..K+1, its group's
messages 1..K, each once, in order.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import trio

from benchmarks.clients import CONNECT_ERRORS, Client, ProtocolError, message_text
from benchmarks.fixtures import create_groups
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link
from benchmarks.workloads.common import (
    AckBook,
    close_all,
    expected_sets,
    merge_acked,
    problems,
    sleep_until,
    sum_correctness,
)
from benchmarks.workloads.idle import RESERVED_FDS

HELP = "N clients K events behind reconnect at once: time until all caught up"
#: Inbox events each member has before the backlog: the group's creation.
CURSOR = 1
MAX_ATTEMPTS = 30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=10_000, help="clients reconnecting (default 10000)")
    p.add_argument("--behind", type=int, default=20, help="events each is behind (default 20)")
    p.add_argument("--group-size", type=int, default=100, help="members per group (default 100)")
    p.add_argument("--jitter", type=float, default=1.0, help="first attempt spread over this many s (default 1)")
    p.add_argument("--backoff-cap", type=float, default=8.0, help="longest pause between attempts (default 8 s)")
    p.add_argument("--attempt-timeout", type=float, default=20.0,
                   help="a client gives up on one connection attempt (connect + welcome) after this (default 20 s)")
    p.add_argument("--timeout", type=float, default=90.0, help="give up on the storm after this (default 90 s)")
    p.add_argument("--workers", type=int, default=4, help="client worker processes (default 4)")


def ws_ceiling_shape(args: argparse.Namespace) -> dict[str, Any]:
    return {"connections": args.group_size, "workers": args.workers}


WS_CEILING_FRACTIONS = (("clients caught up/s", "clients_caught_up_per_s", "handshakes_per_s"),)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {}



async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    notes: list[str] = []
    clients = args.clients
    room = ctx.server.nofile_limit() - RESERVED_FDS
    if clients > room:
        clients = room
        notes.append(f"{args.clients:,} clients asked, {clients:,} run: the server's file limit is "
                     f"{ctx.server.nofile_limit():,} (its hard limit; raising it needs CAP_SYS_RESOURCE)")
    size = max(2, min(args.group_size, clients))
    users = await ctx.seed_users(clients)
    groups = [users[i:i + size] for i in range(0, len(users), size)]
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2] += groups.pop()
    setup_started = time.monotonic()
    channels = await create_groups(ctx.server.url, groups, "storm")
    groups_s = time.monotonic() - setup_started
    workers = max(1, min(args.workers, len(users)))
    jobs: list[dict[str, Any]] = [{"senders": [], "clients": [], "behind": args.behind, "jitter": args.jitter,
                                   "backoff_cap": args.backoff_cap, "attempt_timeout": args.attempt_timeout}
                                  for _ in range(workers)]
    for g, (members, channel) in enumerate(zip(groups, channels)):
        jobs[g % workers]["senders"].append([members[0], channel])
        for m, creds in enumerate(members):
            jobs[(g + m) % workers]["clients"].append([creds, channel])
    profiler = ctx.profiler()
    async with ctx.pool(jobs) as pool:
        await pool.gather(120, "ready")
        backlog_started = time.monotonic()
        await pool.broadcast({"cmd": "backlog"})
        backlog = await pool.gather(300, "backlog")
        backlog_s = time.monotonic() - backlog_started
        acked = merge_acked(r["acked"] for r in backlog)
        start = time.monotonic() + 0.5
        await pool.broadcast({"cmd": "storm", "start": start, "acked": acked, "timeout": args.timeout})
        await sleep_until(start)
        if profiler:
            profiler.start()
        async with ctx.window(pool) as window:
            storm = await pool.gather(args.timeout + 60, "storm")
        profile = profiler.stop() if profiler else None
        await pool.broadcast({"cmd": "finish"})
        await pool.gather(60, "closed")
    backlog_msgs = sum(r["acked_total"] for r in backlog)
    catch_up = Histogram.merged(r["catch_up"] for r in storm).summary_ms((50, 90, 99))
    all_caught_up_s = max(r["last_caught_up_s"] for r in storm)
    events = sum(r["correctness"]["events"] for r in storm)
    correctness = sum_correctness(r["correctness"] for r in storm)
    server = window.figures()
    figures = {
        "clients": len(users),
        "behind": args.behind,
        "groups": len(groups),
        "all_caught_up_s": round(all_caught_up_s, 2),
        "clients_caught_up_per_s": round(len(users) / max(all_caught_up_s, 1e-9), 1),
        "catch_up_ms": catch_up,
        "events_delivered": events,
        "events_per_s": round(events / max(all_caught_up_s, 1e-9), 1),
        "attempts": sum(r["attempts"] for r in storm),
        "failed_attempts": sum(r["failed_attempts"] for r in storm),
        "failure_kinds": _merge_counts(r["failure_kinds"] for r in storm),
        "server_cpu_ms_per_client": round(window.server_cpu_s / max(1, len(users)) * 1000, 3),
        "setup_groups_s": round(groups_s, 2),
        "backlog_s": round(backlog_s, 2),
        "backlog_msg_per_s": round(backlog_msgs / backlog_s, 1),
        "backlog_inbox_rows_per_s": round(backlog_msgs * size / backlog_s, 1),
    }
    if profile is not None:
        figures["profile"] = profile
    rows = [
        ("clients / behind / groups / workers", f"{len(users):,} / {args.behind} / {len(groups)} x {size} / {workers}"),
        ("ALL CAUGHT UP after", f"{fmt(all_caught_up_s)} s"),
        ("per-client catch-up p50 / p90 / p99", ms(catch_up, "p50", "p90", "p99")),
        ("events delivered / per s", f"{events:,} / {fmt(figures['events_per_s'])}"),
        ("connection attempts / failed", f"{figures['attempts']:,} / {figures['failed_attempts']:,}"
                                         + (f" {figures['failure_kinds']}" if figures["failure_kinds"] else "")),
        ("server CPU per client", f"{fmt(figures['server_cpu_ms_per_client'])} ms"),
        ("backlog: group sends / inbox rows per s", f"{fmt(figures['backlog_msg_per_s'])} / "
                                                    f"{fmt(figures['backlog_inbox_rows_per_s'])} ({fmt(backlog_s)} s)"),
    ]
    params = {"clients": len(users), "clients_asked": args.clients, "behind": args.behind, "group_size": size, "jitter": args.jitter,
              "backoff_cap": args.backoff_cap, "attempt_timeout": args.attempt_timeout, "timeout": args.timeout,
              "workers": workers}
    return Outcome(params, figures, correctness, rows, server, notes)


def _merge_counts(parts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


# --- the worker's half ------------------------------------------------------------------------


async def worker(job: dict[str, Any], link: Link) -> None:
    await link.report("ready")
    await link.receive("backlog")
    await _backlog(job, link)
    command = await link.receive("storm")
    expected = expected_sets(command["acked"])
    members = [(Client(job["ws_url"], c["user_id"], c["token"]), channel) for c, channel in job["clients"]]
    caught = Histogram()
    stats: dict[str, Any] = {"attempts": 0, "failed": 0, "kinds": {}, "last": 0.0, "late": 0}
    start = command["start"]
    deadline = start + command["timeout"]

    async with trio.open_nursery() as nursery:
        async def reconnect(client: Client, channel: int) -> None:
            """Connect and sync until caught up; bounded by MAX_ATTEMPTS and the deadline."""
            await sleep_until(start + random.uniform(0, job["jitter"]))
            pause = 0.25
            for _attempt in range(MAX_ATTEMPTS):
                if time.monotonic() > deadline:
                    break
                stats["attempts"] += 1
                try:
                    await client.connect(nursery, timeout_s=job["attempt_timeout"])
                    # Heartbeat from the start: a slow catch-up must not look like an idle client.
                    period = float(client.welcome["heartbeat_s"])
                    nursery.start_soon(client.ping_forever, period, random.uniform(0, period))
                    after = client.ledger.cursor if client.ledger is not None else CURSOR
                    head = int(client.welcome["inbox_head"])
                    if client.ledger is None and head != CURSOR + job["behind"]:
                        raise ProtocolError(f"user {client.user_id}: inbox_head {head}, expected "
                                            f"{CURSOR + job['behind']} (fixtures out of step)")
                    cursor = await client.sync(after, timeout_s=max(10.0, deadline - time.monotonic()))
                    if client.dropped is None and cursor >= head:
                        now = time.monotonic()
                        caught.add(now - start)
                        stats["last"] = max(stats["last"], now - start)
                        return
                    kind = client.dropped or "synced short"
                except (*CONNECT_ERRORS, trio.TooSlowError) as exc:
                    await client.close()
                    kind = type(exc).__name__
                    status = getattr(exc, "status_code", None)
                    if status:
                        kind += f" {status}"
                stats["failed"] += 1
                stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
                client.dropped = None
                await trio.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(job["backoff_cap"], pause * 2)
            stats["late"] += 1

        async with trio.open_nursery() as storm:
            for client, channel in members:
                storm.start_soon(reconnect, client, channel)
        verdict: dict[str, Any] = {"lost": 0, "duplicated": 0, "out_of_order": 0, "events": 0}
        for client, channel in members:
            mine = {channel: expected[channel]}
            if client.ledger is None:
                verdict["lost"] += len(expected[channel])
                continue
            for key, value in client.ledger.verdict(mine).items():
                verdict[key] += value
        verdict.update(problems(c for c, _ in members))
        verdict["not_caught_up"] = stats["late"]
        await link.report("storm", catch_up=caught.to_json(), last_caught_up_s=stats["last"],
                          attempts=stats["attempts"], failed_attempts=stats["failed"], failure_kinds=stats["kinds"],
                          correctness=verdict)
        await link.receive("finish")
        await close_all([c for c, _ in members], timeout_s=10)
        await link.report("closed")
        nursery.cancel_scope.cancel()


async def _backlog(job: dict[str, Any], link: Link) -> None:
    """One member per group sends K messages, pipelined; returns when all are acknowledged."""
    book = AckBook()
    behind = job["behind"]
    started = time.monotonic()
    senders = [(Client(job["ws_url"], c["user_id"], c["token"], on_ack=book.on_ack), ch) for c, ch in job["senders"]]

    async def one(client: Client, channel: int, nursery: trio.Nursery) -> None:
        await client.connect(nursery)
        for n in range(behind):
            due = time.monotonic()
            await client.send(channel, f"{job['tag']}-b{channel}-{n}", message_text(due, "backlog"), due)
        with trio.fail_after(240):
            while client.pending and client.dropped is None:
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as sending:
            limit = trio.CapacityLimiter(64)

            async def limited(client: Client, channel: int) -> None:
                async with limit:
                    await one(client, channel, nursery)

            for client, channel in senders:
                sending.start_soon(limited, client, channel)
        fails = problems(c for c, _ in senders)
        if fails["error_frames"] or fails["unacked"] or fails["dropped"]:
            raise RuntimeError(f"backlog sends failed: {fails}")
        await close_all([c for c, _ in senders])
        nursery.cancel_scope.cancel()
    await link.report("backlog", acked=book.acked_json(), acked_total=book.total,
                      seconds=time.monotonic() - started)

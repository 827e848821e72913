"""Idle connections: C connections, synced and heartbeating, and what they cost the server.

The server runs with a short heartbeat (``--heartbeat``, default 10 s; it
closes a connection silent for 3 x heartbeat) and every connection sends a
``ping`` every heartbeat, starting at a random phase, from the moment it has
synced, exactly as a client that must stay connected does. One user (one
token) per connection, users created in bulk.

Figures: server RSS with 0 connections (after start, before the first one)
and with C (after they all connected and settled), the difference per
connection, server CPU while idle (heartbeats only), and how fast the C
connections were opened. Correctness: every connection stays open and every
ping is answered once, in order (a pong lost, repeated or reordered is
counted as lost, duplicated or out of order).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import trio

from benchmarks import probe
from benchmarks.clients import Client
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt
from benchmarks.workers import Link
from benchmarks.workloads.common import close_all, connect_all, problems, sum_correctness

#: Descriptors the server needs besides client sockets (listener, pool, log, epoll...).
RESERVED_FDS = 100

HELP = "C idle heartbeating connections: server RSS per connection and idle CPU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=20_000, help="connections (default 20000)")
    p.add_argument("--heartbeat", type=int, default=10, help="server heartbeat_s, pings every that (default 10)")
    p.add_argument("--idle-seconds", type=float, default=20.0, help="idle window measured (default 20)")
    p.add_argument("--settle-seconds", type=float, default=3.0,
                   help="pause after connecting, and the window measured with 0 connections (default 3)")
    p.add_argument("--connect-timeout", type=float, default=300.0,
                   help="give up if the connections are not all open after this (default 300 s)")
    p.add_argument("--workers", type=int, default=4, help="client worker processes (default 4)")
    p.add_argument("--scrapes", type=int, default=20, help="/metrics scrapes after the window, back to back (default 20)")
    p.add_argument("--connect-concurrency", type=int, default=32,
                   help="connections being opened at once per worker (default 32)")


def ws_ceiling_shape(args: argparse.Namespace) -> dict[str, Any]:
    return {"connections": 100, "workers": args.workers, "concurrency": args.connect_concurrency}


WS_CEILING_FRACTIONS = (("connections opened/s", "connects_per_s", "handshakes_per_s"),)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CHATD_SERVER_HEARTBEAT_S": str(args.heartbeat)}



async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    notes: list[str] = []
    connections = args.connections
    room = ctx.server.nofile_limit() - RESERVED_FDS
    if connections > room:
        connections = room
        notes.append(f"{args.connections:,} connections asked, {connections:,} run: the server's file limit is "
                     f"{ctx.server.nofile_limit():,} (its hard limit; raising it needs CAP_SYS_RESOURCE)")
    users = await ctx.seed_users(connections)
    workers = max(1, min(args.workers, len(users)))
    jobs = [{"users": users[i::workers], "concurrency": args.connect_concurrency,
             "connect_timeout": args.connect_timeout} for i in range(workers)]
    async with ctx.pool(jobs) as pool:
        await pool.gather(120, "ready")
        async with ctx.window(None) as empty:
            await trio.sleep(args.settle_seconds)
        rss0 = empty.rss_end_kib
        connect_started = time.monotonic()
        await pool.broadcast({"cmd": "connect"})
        connected = await pool.gather(args.connect_timeout + 30, "connected")
        connect_s = time.monotonic() - connect_started
        await trio.sleep(args.settle_seconds)
        await pool.broadcast({"cmd": "window"})
        profiler = ctx.profiler()
        if profiler:
            profiler.start()
        echo_before = await probe.scrape(ctx.server.url)
        async with ctx.window(pool) as window:
            await trio.sleep(args.idle_seconds)
        profile = profiler.stop() if profiler else None
        echo = probe.echo_window(echo_before, await probe.scrape(ctx.server.url))
        scraping = await probe.scrape_cost(ctx.server, args.scrapes, window.server_cpu_s / window.seconds)
        await pool.broadcast({"cmd": "stop"})
        done = await pool.gather(60, "done")
    n = sum(r["connected"] for r in connected)
    rss_c = window.rss_end_kib
    server = window.figures()
    idle_cpu_pct = server["server_cpu_pct"]
    correctness = sum_correctness(r["correctness"] for r in done)
    figures = {
        "connections": n,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(n / connect_s, 1),
        "server_rss_0_mib": round(rss0 / 1024, 1),
        "server_rss_c_mib": round(rss_c / 1024, 1),
        "rss_per_connection_kib": round((rss_c - rss0) / max(1, n), 2),
        "idle_server_cpu_pct": idle_cpu_pct,
        "empty_server_cpu_pct": empty.figures()["server_cpu_pct"],
        "idle_server_cpu_ms_per_ping": round(window.server_cpu_s / max(1, sum(r["pings_in_window"] for r in done))
                                             * 1000, 3),
        "heartbeat_s": args.heartbeat,
        "pings": sum(r["pings"] for r in done),
        "server_nofile": ctx.server.nofile_limit(),
        "echo_idle": echo,
        "metrics_scrape": scraping,
    }
    if profile is not None:
        figures["profile"] = profile
    rows = [
        ("connections open / tried / workers / heartbeat", f"{n:,} / {connections:,} / {workers} / {args.heartbeat} s"),
        ("opened in / rate", f"{fmt(connect_s)} s / {fmt(figures['connects_per_s'])} connections/s"),
        ("server RSS with 0 / with C", f"{fmt(figures['server_rss_0_mib'])} / {fmt(figures['server_rss_c_mib'])} MiB"),
        ("server RSS per connection", f"{fmt(figures['rss_per_connection_kib'])} KiB"),
        ("server CPU idle with C (% of one core)", f"{fmt(idle_cpu_pct)} % "
                                                   f"({fmt(figures['idle_server_cpu_ms_per_ping'])} ms per ping)"),
        ("server CPU idle with 0", f"{fmt(figures['empty_server_cpu_pct'])} %"),
        ("echo probe round trip with C: rounds / mean / p50 / p99",
         f"{echo['rounds']} / {echo.get('mean_ms')} / {echo.get('p50_ms')} / {echo.get('p99_ms')} ms"),
        ("/metrics scrape with C: wall p50 / max, server CPU per scrape",
         f"{scraping['wall_ms_p50']} / {scraping['wall_ms_max']} ms, {scraping['server_cpu_ms_per_scrape']} ms "
         f"({scraping['bytes']:,} bytes)"),
    ]
    params = {"connections": connections, "connections_asked": args.connections, "heartbeat": args.heartbeat,
              "idle_seconds": args.idle_seconds,
              "settle_seconds": args.settle_seconds, "workers": workers,
              "connect_concurrency": args.connect_concurrency, "connect_timeout": args.connect_timeout}
    return Outcome(params, figures, correctness, rows, server, notes)


# --- the worker's half ------------------------------------------------------------------------


async def worker(job: dict[str, Any], link: Link) -> None:
    clients = [Client(job["ws_url"], u["user_id"], u["token"]) for u in job["users"]]
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as pings:

            def start_heartbeat(client: Client) -> None:
                period = float(client.welcome["heartbeat_s"])
                pings.start_soon(client.ping_forever, period, random.uniform(0, period))

            await link.report("ready")
            await link.receive("connect")
            failed = await connect_all(clients, nursery, concurrency=job["concurrency"], timeout_s=job["connect_timeout"],
                                       after_connect=start_heartbeat, tolerate=True)
            gone = {id(c) for c in failed}
            live = [c for c in clients if id(c) not in gone]
            await link.report("connected", connected=len(live), failed=len(failed))
            await link.receive("window")
            pings_before = sum(c.pings_sent for c in live)
            await link.receive("stop")
            window_pings = sum(c.pings_sent for c in live) - pings_before
            pings.cancel_scope.cancel()
        with trio.move_on_after(10):
            while any(c.pongs < c.pings_sent and c.dropped is None for c in clients):
                await trio.sleep(0.1)
        correctness = {
            "lost": sum(c.pings_sent - c.pongs for c in live),
            "duplicated": sum(c.pong_duplicated for c in live),
            "out_of_order": sum(c.pong_out_of_order for c in live),
            **problems(live),
            "not_connected": len(failed),
        }
        await link.report("done", correctness=correctness, pings=sum(c.pings_sent for c in clients),
                          pings_in_window=window_pings)
        await close_all(clients, timeout_s=10)
        nursery.cancel_scope.cancel()

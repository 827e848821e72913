"""1:1 steady: U users in DM pairs, an offered rate R msg/s in total, open loop.

Each user sends into its pair's DM at R/U msg/s on a fixed schedule (a random
phase per user, then every U/R seconds) whether or not earlier sends were
acknowledged: latency is measured from the time the send was *due*, so it
includes any queueing, on the server or in a client that fell behind
(coordinated omission avoided). Both members of a pair live in the same
worker process; every user is synced, so it receives its partner's messages
and its own (PROTOCOL §4: the sender is a recipient too).

Figures: send->ack and send->deliver (to the partner) p50/p95/p99/p99.9,
achieved (acknowledged) and delivered rates in the window, server CPU and
RSS. Correctness: every user saw every acknowledged message of its DM exactly
once, in seq and inbox_seq order.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from benchmarks import probe
from benchmarks.fixtures import open_dms
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link
from benchmarks.workloads.common import (
    PairTraffic,
    close_all,
    await_go,
    connect_and_keep_alive,
    expected_sets,
    merge_acked,
    sleep_until,
    sum_correctness,
    verdicts,
    wait_delivered,
)

HELP = "1:1 pairs at an offered rate (open loop): latency percentiles, CPU, RSS"
PERCENTILES = ("p50", "p95", "p99", "p99.9")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=200, help="users, in DM pairs (default 200)")
    p.add_argument("--rate", type=float, default=500.0, help="offered msg/s in total (default 500)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the measured window (default 20)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("--text-chars", type=int, default=60, help="message text length (default 60)")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {}



async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(args.users - args.users % 2)
    pairs = [(users[i], users[i + 1]) for i in range(0, len(users), 2)]
    channels = await open_dms(ctx.server.url, pairs)
    workers = max(1, min(args.workers, len(pairs)))
    jobs: list[dict[str, Any]] = [{"pairs": [], "rate_per_user": args.rate / len(users), "text_chars": args.text_chars}
                                  for _ in range(workers)]
    for i, ((a, b), channel) in enumerate(zip(pairs, channels)):
        jobs[i % workers]["pairs"].append([a, b, channel])
    async with ctx.pool(jobs) as pool:
        await pool.gather(120, "ready")
        start = time.monotonic() + 0.5
        stop = start + args.seconds
        await pool.broadcast({"cmd": "go", "start": start, "stop": stop})
        await sleep_until(start)
        profiler = ctx.profiler()
        if profiler:
            profiler.start()
        echo_before = await probe.scrape(ctx.server.url)
        async with ctx.window(pool) as window:
            await sleep_until(stop)
        profile = profiler.stop() if profiler else None
        echo = probe.echo_window(echo_before, await probe.scrape(ctx.server.url))
        sent = await pool.gather(args.seconds + 60, "sent")
        await pool.broadcast({"cmd": "expect", "acked": merge_acked(r["acked"] for r in sent), "timeout": 30})
        done = await pool.gather(60, "delivered")
    ack = Histogram.merged(r["ack"] for r in sent).summary_ms()
    deliver = Histogram.merged(r["deliver"] for r in done).summary_ms()
    lag = Histogram.merged(r["lag"] for r in sent).summary_ms()
    acked_in_window = sum(r["acked_in_window"] for r in sent)
    delivered_in_window = sum(r["delivered_in_window"] for r in done)
    server = window.figures()
    achieved = acked_in_window / window.seconds
    figures = {
        "offered_msg_per_s": args.rate,
        "achieved_msg_per_s": round(achieved, 1),
        "delivered_msg_per_s": round(delivered_in_window / window.seconds, 1),
        "sends": sum(r["sends"] for r in sent),
        "acked": sum(r["acked_total"] for r in sent),
        "send_ack_ms": ack,
        "send_deliver_ms": deliver,
        "send_lag_ms": lag,
        "server_cpu_ms_per_msg": round(window.server_cpu_s / max(1, acked_in_window) * 1000, 3),
        "echo_under_load": echo,
    }
    if profile is not None:
        figures["profile"] = profile
    correctness = sum_correctness(r["correctness"] for r in done)
    rows = [
        ("users / pairs / workers", f"{len(users)} / {len(pairs)} / {workers}"),
        ("offered / achieved (acked) / delivered", f"{fmt(args.rate)} / {fmt(achieved)} / "
                                                   f"{fmt(figures['delivered_msg_per_s'])} msg/s"),
        ("send->ack p50 / p95 / p99 / p99.9", ms(ack, *PERCENTILES)),
        ("send->deliver p50 / p95 / p99 / p99.9", ms(deliver, *PERCENTILES)),
        ("client send lag p99 (due -> written)", ms(lag, "p99")),
        ("server CPU per message", f"{fmt(figures['server_cpu_ms_per_msg'])} ms"),
        ("echo probe round trip: rounds / mean / p50 / p99",
         f"{echo['rounds']} / {echo.get('mean_ms')} / {echo.get('p50_ms')} / {echo.get('p99_ms')} ms"),
    ]
    params = {"users": len(users), "rate": args.rate, "seconds": args.seconds, "workers": workers,
              "text_chars": args.text_chars}
    return Outcome(params, figures, correctness, rows, server)


# --- the worker's half ------------------------------------------------------------------------


async def worker(job: dict[str, Any], link: Link) -> None:
    traffic = PairTraffic(job)
    async with trio.open_nursery() as nursery:
        await connect_and_keep_alive(traffic.clients, nursery)
        go = await await_go(link, traffic.book, traffic.window)
        async with trio.open_nursery() as senders:
            traffic.start_senders(senders, go["start"], go["stop"])
        await traffic.wait_acked()
        await link.report("sent", **traffic.sent_report())
        expect = await link.receive("expect")
        expected = expected_sets(expect["acked"])
        caught_up = await wait_delivered(traffic.members, expected, expect["timeout"])
        correctness = verdicts(traffic.members, expected)
        correctness["not_caught_up"] = 0 if caught_up else 1
        await link.report("delivered", deliver=traffic.deliver.to_json(), correctness=correctness,
                          delivered_in_window=traffic.delivered_in_window)
        await close_all(traffic.clients)
        nursery.cancel_scope.cancel()

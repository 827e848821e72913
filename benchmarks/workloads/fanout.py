"""Group fan-out: one group of M members, all connected and synced, S of them sending.

By default each sender works in a closed loop on delivery: it sends, waits for
its ack, then for its own copy of the message (the sender is a recipient too,
PROTOCOL §4), then sends again. Its copy goes out in the same fan-out as
everyone else's, so at most about S messages are being fanned out at once,
the server runs at its delivery capacity and latency stays the latency of a
fan-out rather than of an ever-growing queue. ``--rate R`` instead offers R
msg/s in total on a clock (open loop).

Figures: deliveries/s (message events received by members other than the
sender, in the window), per-recipient send->deliver latency p50/p99/p99.9,
and the time for one message to reach every member (p50/p99 over messages).
Members are spread over the worker processes; send times travel in the
message text (CLOCK_MONOTONIC is one clock for the machine).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import trio

from benchmarks.clients import Client, message_text, sent_at
from benchmarks.fixtures import create_groups
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link
from benchmarks.workloads.common import (
    AckBook,
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

HELP = "one group of M members, S senders: deliveries/s and per-recipient latency"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, default=500, help="group members, all connected (default 500)")
    p.add_argument("--senders", type=int, default=5, help="members that send (default 5)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="offered msg/s in total, open loop (default 0: each sender waits for its own copy)")
    p.add_argument("--seconds", type=float, default=15.0, help="length of the measured window (default 15)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("--text-chars", type=int, default=60)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {}


def ws_ceiling_shape(args: argparse.Namespace) -> dict[str, Any]:
    """The same M connections; about S messages in flight at once (closed loop), one in open loop."""
    batch = 1 if args.rate > 0 else max(1, min(args.senders, args.members))
    return {"connections": args.members, "workers": args.workers, "batch": batch}


WS_CEILING_FRACTIONS = (("deliveries/s", "deliveries_per_s", "fanout_deliveries_per_s"),)



async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(args.members)
    (channel,) = await create_groups(ctx.server.url, [users], "fanout")
    senders = max(1, min(args.senders, len(users)))
    workers = max(1, min(args.workers, len(users)))
    jobs: list[dict[str, Any]] = [
        {"channel": channel, "members": [], "rate_per_sender": args.rate / senders, "text_chars": args.text_chars}
        for _ in range(workers)
    ]
    for i, creds in enumerate(users):
        jobs[i % workers]["members"].append([creds, i < senders])
    profiler = ctx.profiler()
    async with ctx.pool(jobs) as pool:
        await pool.gather(120, "ready")
        start = time.monotonic() + 0.5
        stop = start + args.seconds
        await pool.broadcast({"cmd": "go", "start": start, "stop": stop})
        await sleep_until(start)
        if profiler:
            profiler.start()
        async with ctx.window(pool) as window:
            await sleep_until(stop)
        profile = profiler.stop() if profiler else None
        sent = await pool.gather(args.seconds + 60, "sent")
        await pool.broadcast({"cmd": "expect", "acked": merge_acked(r["acked"] for r in sent), "timeout": 60})
        done = await pool.gather(90, "delivered")
    acked = sum(r["acked_total"] for r in sent)
    acked_in_window = sum(r["acked_in_window"] for r in sent)
    delivered_in_window = sum(r["delivered_in_window"] for r in done)
    deliver = Histogram.merged(r["deliver"] for r in done).summary_ms()
    ack = Histogram.merged(r["ack"] for r in sent).summary_ms()
    # One message has reached everyone when its last recipient (over all workers) got it.
    complete = Histogram()
    reach: dict[str, list[float]] = {}
    for r in done:
        for seq, (count, latest) in r["reach"].items():
            entry = reach.setdefault(seq, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], latest)
    partial = 0
    for count, latest in reach.values():
        if count == len(users) - 1:
            complete.add(latest)
        else:
            partial += 1
    completion = complete.summary_ms()
    server = window.figures()
    deliveries_per_s = delivered_in_window / window.seconds
    figures = {
        "members": len(users),
        "senders": senders,
        "mode": f"open loop at {args.rate} msg/s" if args.rate > 0 else "closed loop on the sender's own copy",
        "messages_per_s": round(acked_in_window / window.seconds, 1),
        "deliveries_per_s": round(deliveries_per_s, 1),
        "messages_acked": acked,
        "send_ack_ms": ack,
        "send_deliver_ms": deliver,
        "reach_everyone_ms": completion,
        "server_cpu_ms_per_delivery": round(window.server_cpu_s / max(1, delivered_in_window) * 1000, 4),
    }
    if profile is not None:
        figures["profile"] = profile
    correctness = sum_correctness(r["correctness"] for r in done)
    rows = [
        ("members / senders / workers", f"{len(users)} / {senders} / {workers}, {figures['mode']}"),
        ("messages/s / deliveries/s", f"{fmt(figures['messages_per_s'])} / {fmt(figures['deliveries_per_s'])}"),
        ("send->ack p50 / p99", ms(ack, "p50", "p99")),
        ("send->deliver per recipient p50 / p99 / p99.9", ms(deliver, "p50", "p99", "p99.9")),
        ("one message reaches all p50 / p99", ms(completion, "p50", "p99")),
        ("server CPU per delivery", f"{fmt(figures['server_cpu_ms_per_delivery'])} ms"),
    ]
    notes: list[str] = []
    if partial:
        notes.append(f"{partial} messages not counted in 'reaches all' (still in flight at the end of the window)")
    params = {"members": len(users), "senders": senders, "rate": args.rate, "seconds": args.seconds,
              "workers": workers, "text_chars": args.text_chars}
    return Outcome(params, figures, correctness, rows, server, notes)


# --- the worker's half ------------------------------------------------------------------------


async def worker(job: dict[str, Any], link: Link) -> None:
    channel = job["channel"]
    book = AckBook()
    deliver = Histogram()
    window = [0.0, float("inf")]
    counters = {"delivered_in_window": 0, "sends": 0}
    reach: dict[int, list[float]] = {}  # seq -> [recipients here, latest latency]
    echoes: dict[str, trio.Event] = {}

    def on_message(client: Client, frame: dict[str, Any], now: float) -> None:
        if frame["sender_id"] == client.user_id:
            waiter = echoes.pop(frame["client_msg_id"], None)
            if waiter is not None:
                waiter.set()
            return
        latency = now - sent_at(frame["text"])
        deliver.add(latency)
        if window[0] <= now <= window[1]:
            counters["delivered_in_window"] += 1
        entry = reach.setdefault(frame["seq"], [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], latency)

    members: list[tuple[Client, list[int]]] = []
    senders: list[Client] = []
    for creds, sends in job["members"]:
        client = Client(job["ws_url"], creds["user_id"], creds["token"], on_ack=book.on_ack, on_message=on_message)
        members.append((client, [channel]))
        if sends:
            senders.append(client)
    clients = [c for c, _ in members]
    filler = "x" * job["text_chars"]

    async def closed_loop(client: Client, index: int, stop: float) -> None:
        n = 0
        while time.monotonic() < stop:
            cmid = f"{job['tag']}-{job['index']}-{index}-{n}"
            n += 1
            echo = echoes[cmid] = trio.Event()
            due = time.monotonic()
            counters["sends"] += 1
            if not await client.send_and_wait(channel, cmid, message_text(due, filler), due):
                return
            with trio.move_on_after(30):
                await echo.wait()

    async def open_loop(client: Client, index: int, start: float, stop: float) -> None:
        period = 1.0 / job["rate_per_sender"]
        due, n = start + random.uniform(0, period), 0
        while due < stop:
            await sleep_until(due)
            await client.send(channel, f"{job['tag']}-{job['index']}-{index}-{n}", message_text(due, filler), due)
            counters["sends"] += 1
            n += 1
            due += period

    async with trio.open_nursery() as nursery:
        await connect_and_keep_alive(clients, nursery)
        go = await await_go(link, book, window)
        await sleep_until(go["start"])
        async with trio.open_nursery() as active:
            for index, client in enumerate(senders):
                if job["rate_per_sender"] > 0:
                    active.start_soon(open_loop, client, index, go["start"], go["stop"])
                else:
                    active.start_soon(closed_loop, client, index, go["stop"])
        with trio.move_on_after(30):
            while any(c.pending and c.dropped is None for c in senders):
                await trio.sleep(0.05)
        await link.report("sent", acked=book.acked_json(), ack=book.latency.to_json(), sends=counters["sends"],
                          acked_in_window=book.in_window, acked_total=book.total)
        expect = await link.receive("expect")
        expected = expected_sets(expect["acked"])
        caught_up = await wait_delivered(members, expected, expect["timeout"])
        correctness = verdicts(members, expected)
        correctness["not_caught_up"] = 0 if caught_up else 1
        await link.report("delivered", deliver=deliver.to_json(), correctness=correctness,
                          delivered_in_window=counters["delivered_in_window"],
                          reach={str(seq): entry for seq, entry in reach.items()})
        await close_all(clients)
        nursery.cancel_scope.cancel()

"""Saturation: closed-loop 1:1 senders, stepped up until throughput stops rising.

P DM pairs are connected and synced from the start; at each step the first
n pairs' senders send in a closed loop (send, wait for the ack, send again)
for ``--step-seconds``, and n grows by ``--factor`` until two steps in a row
fail to beat the best acknowledged rate by ``--min-gain``, or n reaches P.
The peak is the step with the highest acknowledged (durable) rate; reported
with its delivered rate and latencies, beside every step's figures.

The partner's delivery counts as delivered; the sender's own echo (it is a
recipient too) is checked for correctness but not counted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from benchmarks.clients import Client, message_text, sent_at
from benchmarks.fixtures import open_dms
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link
from benchmarks.workloads.common import (
    AckBook,
    close_all,
    connect_and_keep_alive,
    expected_sets,
    merge_acked,
    sleep_until,
    sum_correctness,
    verdicts,
    wait_delivered,
)

HELP = "closed-loop 1:1 senders, more each step, until throughput stops rising: the peak"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, default=256, help="most senders (DM pairs) (default 256)")
    p.add_argument("--start", type=int, default=2, help="senders in the first step (default 2)")
    p.add_argument("--factor", type=float, default=2.0, help="senders grow by this factor per step (default 2)")
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each step (default 5)")
    p.add_argument("--min-gain", type=float, default=0.05,
                   help="a step must beat the best rate by this fraction to count as rising (default 0.05)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("--text-chars", type=int, default=60)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {}



def _steps(args: argparse.Namespace) -> list[int]:
    steps, n = [], max(1, args.start)
    while n < args.pairs:
        steps.append(n)
        n = max(n + 1, int(round(n * args.factor)))
    steps.append(args.pairs)
    return steps


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(2 * args.pairs)
    pairs = [(users[i], users[i + 1]) for i in range(0, len(users), 2)]
    channels = await open_dms(ctx.server.url, pairs)
    workers = max(1, min(args.workers, len(pairs)))
    jobs: list[dict[str, Any]] = [{"pairs": [], "text_chars": args.text_chars} for _ in range(workers)]
    for i, ((a, b), channel) in enumerate(zip(pairs, channels)):
        jobs[i % workers]["pairs"].append([i, a, b, channel])
    steps: list[dict[str, Any]] = []
    profiler = ctx.profiler()
    async with ctx.pool(jobs) as pool:
        await pool.gather(120, "ready")
        if profiler:
            profiler.start()
        best, flat = 0.0, 0
        for n in _steps(args):
            start = time.monotonic() + 0.3
            stop = start + args.step_seconds
            await pool.broadcast({"cmd": "step", "senders": n, "start": start, "stop": stop})
            await sleep_until(start)
            async with ctx.window(pool) as window:
                await sleep_until(stop)
            replies = await pool.gather(args.step_seconds + 60, "step")
            steps.append(_step_figures(n, window, replies))
            rate = steps[-1]["acked_msg_per_s"]
            if rate > best * (1 + args.min_gain):
                best, flat = rate, 0
            else:
                flat += 1
                if flat >= 2:
                    break
        profile = profiler.stop() if profiler else None
        await pool.broadcast({"cmd": "finish"})
        sent = await pool.gather(60, "sent")
        await pool.broadcast({"cmd": "expect", "acked": merge_acked(r["acked"] for r in sent), "timeout": 30})
        done = await pool.gather(60, "delivered")
    peak = max(steps, key=lambda s: s["acked_msg_per_s"])
    correctness = sum_correctness(r["correctness"] for r in done)
    figures = {
        "peak_acked_msg_per_s": peak["acked_msg_per_s"],
        "peak_delivered_msg_per_s": peak["delivered_msg_per_s"],
        "peak_senders": peak["senders"],
        "peak_send_ack_ms": peak["send_ack_ms"],
        "peak_send_deliver_ms": peak["send_deliver_ms"],
        "peak_server_cpu_ms_per_msg": peak["server_cpu_ms_per_msg"],
        "steps": steps,
    }
    if profile is not None:
        figures["profile"] = profile
    rows = [("pairs / workers / step", f"{len(pairs)} / {workers} / {fmt(args.step_seconds)} s")]
    for s in steps:
        rows.append((f"  {s['senders']:>4} senders: acked / delivered",
                     f"{fmt(s['acked_msg_per_s'])} / {fmt(s['delivered_msg_per_s'])} msg/s, ack p50/p99 "
                     f"{ms(s['send_ack_ms'], 'p50', 'p99')}, server CPU {fmt(s['server']['server_cpu_pct'])} %"))
    rows += [
        ("PEAK acked (durable) / delivered", f"{fmt(peak['acked_msg_per_s'])} / {fmt(peak['delivered_msg_per_s'])}"
                                             f" msg/s at {peak['senders']} senders"),
        ("peak send->ack p50 / p99 / p99.9", ms(peak["send_ack_ms"], "p50", "p99", "p99.9")),
        ("peak send->deliver p50 / p99 / p99.9", ms(peak["send_deliver_ms"], "p50", "p99", "p99.9")),
        ("peak server CPU per message", f"{fmt(peak['server_cpu_ms_per_msg'])} ms"),
    ]
    notes: list[str] = []
    params = {"pairs": len(pairs), "start": args.start, "factor": args.factor, "step_seconds": args.step_seconds,
              "min_gain": args.min_gain, "workers": workers, "text_chars": args.text_chars}
    return Outcome(params, figures, correctness, rows, peak["server"], notes)


def _step_figures(n: int, window: Any, replies: list[dict[str, Any]]) -> dict[str, Any]:
    acked = sum(r["acked_in_window"] for r in replies)
    delivered = sum(r["delivered_in_window"] for r in replies)
    return {
        "senders": n,
        "acked_msg_per_s": round(acked / window.seconds, 1),
        "delivered_msg_per_s": round(delivered / window.seconds, 1),
        "send_ack_ms": Histogram.merged(r["ack"] for r in replies).summary_ms(),
        "send_deliver_ms": Histogram.merged(r["deliver"] for r in replies).summary_ms(),
        "server_cpu_ms_per_msg": round(window.server_cpu_s / max(1, acked) * 1000, 3),
        "server": window.figures(),
    }


# --- the worker's half ------------------------------------------------------------------------


async def worker(job: dict[str, Any], link: Link) -> None:
    book = AckBook()
    state: dict[str, Any] = {"deliver": Histogram(), "delivered": 0, "window": (0.0, 0.0)}

    def on_message(client: Client, frame: dict[str, Any], now: float) -> None:
        if frame["sender_id"] == client.user_id:
            return
        state["deliver"].add(now - sent_at(frame["text"]))
        start, stop = state["window"]
        if start <= now <= stop:
            state["delivered"] += 1

    senders: list[tuple[int, Client, int]] = []
    members: list[tuple[Client, list[int]]] = []
    for index, a, b, channel in job["pairs"]:
        sender = Client(job["ws_url"], a["user_id"], a["token"], on_ack=book.on_ack, on_message=on_message)
        partner = Client(job["ws_url"], b["user_id"], b["token"], on_message=on_message)
        senders.append((index, sender, channel))
        members += [(sender, [channel]), (partner, [channel])]
    clients = [c for c, _ in members]
    filler = "x" * job["text_chars"]
    counter = [0]

    async def closed_loop(client: Client, channel: int, index: int, stop: float) -> None:
        while time.monotonic() < stop:
            counter[0] += 1
            due = time.monotonic()
            ok = await client.send_and_wait(channel, f"{job['tag']}-{index}-{counter[0]}", message_text(due, filler),
                                            due)
            if not ok:
                return

    async with trio.open_nursery() as nursery:
        await connect_and_keep_alive(clients, nursery)
        await link.report("ready")
        while True:
            command = await link.receive()
            if command["cmd"] != "step":
                break
            book.latency, book.in_window = Histogram(), 0
            book.window = (command["start"], command["stop"])
            state.update(deliver=Histogram(), delivered=0, window=(command["start"], command["stop"]))
            await sleep_until(command["start"])
            async with trio.open_nursery() as active:
                for index, client, channel in senders:
                    if index < command["senders"]:
                        active.start_soon(closed_loop, client, channel, index, command["stop"])
            await trio.sleep(0.1)  # the last deliveries of the step
            await link.report("step", ack=book.latency.to_json(), deliver=state["deliver"].to_json(),
                              acked_in_window=book.in_window, delivered_in_window=state["delivered"])
        await link.report("sent", acked=book.acked_json())
        expect = await link.receive("expect")
        expected = expected_sets(expect["acked"])
        caught_up = await wait_delivered(members, expected, expect["timeout"])
        correctness = verdicts(members, expected)
        correctness["not_caught_up"] = 0 if caught_up else 1
        await link.report("delivered", correctness=correctness)
        await close_all(clients)
        nursery.cancel_scope.cancel()

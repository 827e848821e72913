"""Offline push: one sender writes a DM to each of N offline users, each with a webhook subscription.

Every recipient has no connection (offline on every node), so each message
queues one push in its send's transaction; the server's push worker delivers
them to a local webhook receiver in this process (``push.allow_private_targets``
is set for the run: the receiver is on 127.0.0.1). The sends go over HTTP with
``--concurrency`` in flight. Beforehand each recipient opens its DM through the
API; the subscriptions are one through the API and the rest in bulk by SQL
(benchmarks/seed.py: ``webhooks``).

Figures: pushes/s delivered over the window (first ack to last push), sends/s
over the same run (the pushes cannot outrun the sends), and per push the
latency from its send's ack (the commit, hence the enqueue, happened before it)
to its arrival at the receiver, p50/p99/p99.9. Correctness: every message's
push arrives exactly once (a duplicate is allowed by at-least-once only after a
failure, and no delivery fails here).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
import trio

from benchmarks import seed
from benchmarks.fixtures import open_dms
from benchmarks.harness import Outcome, RunContext
from benchmarks.receivers import Received, Receiver
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link

HELP = "N offline recipients, one DM each, webhook pushes to a local receiver: pushes/s, enqueue->delivered"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipients", type=int, default=10000, help="offline recipients, one DM each (default 10000)")
    p.add_argument("--concurrency", type=int, default=32, help="sends in flight (default 32)")
    p.add_argument("--workers", type=int, default=1, help="unused: this workload runs in one process")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every push (default 300)")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CHATD_PUSH_ALLOW_PRIVATE_TARGETS": "true", "CHATD_LIMITS_SEND_RATE_PER_S": "1000000",
            "CHATD_LIMITS_SEND_BURST": "1000000"}


class Sink(Receiver):
    """Counts arrivals by channel (each DM carries one message, so one push)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_channel: dict[int, list[float]] = {}

    def check(self, request: Received) -> None:
        self.by_channel.setdefault(int(json.loads(request.body)["channel_id"]), []).append(request.at)


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(args.recipients + 1)
    sender, recipients = users[0], users[1:]
    channels = await open_dms(ctx.server.url, [(r, sender) for r in recipients], concurrency=16)
    sink = Sink()
    acked: dict[int, float] = {}
    async with sink.running(), httpx.AsyncClient(base_url=ctx.server.url, timeout=60) as client:
        # One subscription through the API (its path is tested), the rest in bulk (setup time, see seed.webhooks).
        r = await client.post("/v1/push/subscriptions", json={"kind": "webhook", "url": sink.url + "/hook"},
                              headers={"Authorization": f"Bearer {recipients[0]['token']}"})
        assert r.status_code == 201, r.text
        await trio.to_thread.run_sync(
            seed.webhooks, ctx.dsn, [c["user_id"] for c in recipients[1:]], sink.url + "/hook")

        sends = trio.CapacityLimiter(args.concurrency)

        async def send(index: int, channel: int) -> None:
            async with sends:
                r = await client.post(f"/v1/channels/{channel}/messages",
                                      json={"client_msg_id": f"{ctx.tag}-p{index}", "text": f"push {index}"},
                                      headers={"Authorization": f"Bearer {sender['token']}"})
            assert r.status_code == 201, r.text
            acked[channel] = time.monotonic()

        async with ctx.window(None) as window:
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for index, channel in enumerate(channels):
                    nursery.start_soon(send, index, channel)
            sends_done = time.monotonic()
            with trio.move_on_after(args.timeout):
                await sink.wait_for(len(channels), timeout=args.timeout)
            finished = time.monotonic()
    latency = Histogram()
    for channel, arrivals in sink.by_channel.items():
        if channel in acked:
            latency.add(max(0.0, arrivals[0] - acked[channel]))
    lost = sum(1 for c in channels if c not in sink.by_channel)
    duplicated = sum(len(a) - 1 for a in sink.by_channel.values())
    first_ack = min(acked.values()) if acked else started
    last_push = max((a[0] for a in sink.by_channel.values()), default=finished)
    summary = latency.summary_ms()
    figures = {
        "recipients": len(channels),
        "sends_per_s": round(len(acked) / max(1e-9, sends_done - started), 1),
        "pushes_per_s": round(len(sink.by_channel) / max(1e-9, last_push - first_ack), 1),
        "pushes_delivered": len(sink.by_channel),
        "enqueue_delivered_ms": summary,
        "drain_after_last_send_s": round(max(0.0, last_push - sends_done), 2),
        "server_cpu_ms_per_push": round(window.server_cpu_s / max(1, len(sink.by_channel)) * 1000, 3),
    }
    rows = [
        ("offline recipients (one DM, one webhook each)", str(len(channels))),
        ("sends/s (HTTP, %d in flight) / pushes/s delivered" % args.concurrency,
         f"{fmt(figures['sends_per_s'])} / {fmt(figures['pushes_per_s'])}"),
        ("ack (enqueue committed) -> push received p50 / p99 / p99.9", ms(summary, "p50", "p99", "p99.9")),
        ("last push after the last send", f"{fmt(figures['drain_after_last_send_s'])} s"),
        ("server CPU per push (sends included)", f"{fmt(figures['server_cpu_ms_per_push'])} ms"),
    ]
    correctness = {"lost": lost, "duplicated": duplicated, "out_of_order": 0}
    params = {"recipients": len(channels), "concurrency": args.concurrency}
    return Outcome(params, figures, correctness, rows, window.figures())


async def worker(job: dict[str, Any], link: Link) -> None:
    """No worker processes: the receiver runs in the orchestrator."""

"""Rolling restart: two nodes replaced one after the other under steady group load.

Setup: ``--devices`` users (bulk) in one group created over HTTP; a second
``chatd serve`` (node b) on the same database beside the harness's (node a).
Every member has one device that follows its inbox and obeys ``reconnect``
(waits a random time up to ``after_ms``, then connects to another serving
node and syncs from its cursor); ``--senders`` of them also send, together
``--rate`` msg/s on a clock, retrying an unacknowledged send with the same
``client_msg_id`` wherever they land (chatd/testing_rolling.py, the clients
of the suite's rolling-restart test). Clients run in this process, on one
clock: each message's text is its due time.

The roll, as an operator (or ``systemctl restart chatd@a chatd@b``) does it:
after ``--settle`` s of load, node a leaves the set clients connect to, gets
SIGTERM (it must drain and exit 0), starts again and rejoins once its
``/readyz`` is 200; ``--settle`` s later the same for node b; ``--settle`` s
more of load.

Figures: send->deliver p50/p99/max over the whole run and for messages due
during the roll (first SIGTERM to last node ready); how long clients waited
(from ``reconnect``, or a lost connection, to ``synced`` (devices) or the next
``welcome`` (senders)); the ``after_ms`` the nodes asked for; each node's
drain and restart time; retried sends. Correctness: every acknowledged
message reached every device, each once, in inbox order.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg
import httpx
import trio

from benchmarks.fixtures import create_groups
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.server import ChatdServer
from benchmarks.stats import Histogram
from chatd.testing_rolling import FollowingDevice, NodeSet, RetryingSender, under_load

HELP = "two nodes restarted one after the other under group load: delivery and client waits"
READY_TIMEOUT_S = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=12, help="group members, one device each (default 12)")
    p.add_argument("--rate", type=float, default=80.0, help="msg/s offered, all senders together (default 80)")
    p.add_argument("--senders", type=int, default=12, help="members that also send, each on a second connection (default 12)")
    p.add_argument("--settle", type=float, default=4.0, help="s of load before, between and after (default 4)")
    p.add_argument("--workers", type=int, default=1, help="accepted like the other workloads\'; this one\'s clients run in the orchestrating process")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CHATD_NODE_NAME": "roll-a"}


def inbox_heads(dsn: str, user_ids: list[int]) -> dict[int, int]:
    async def run() -> dict[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT id, inbox_head FROM users WHERE id = ANY($1::bigint[])", user_ids)
        finally:
            await conn.close()
        return {r["id"]: r["inbox_head"] for r in rows}

    return asyncio.run(run())


async def restart(server: ChatdServer, generation: int) -> dict[str, Any]:
    """SIGTERM, wait for the exit, start again, wait for /readyz 200."""
    start = trio.current_time()
    code = await trio.to_thread.run_sync(server.stop)
    stopped = trio.current_time()
    server.log_path = server.workdir / f"server-{generation}.log"
    url = await trio.to_thread.run_sync(server.start)
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(READY_TIMEOUT_S):
            while (await client.get("/readyz")).status_code != 200:
                await trio.sleep(0.05)
    return {"exit_code": code, "drain_s": round(stopped - start, 3), "down_s": round(trio.current_time() - start, 3),
            "url": url}


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(args.devices)
    channel = (await create_groups(ctx.server.url, [users], f"rolling {ctx.tag}"))[0]
    b = ChatdServer(ctx.dsn, ctx.workdir / "b", env={"CHATD_NODE_NAME": "roll-b"})
    await trio.to_thread.run_sync(b.start)
    servers = {"a": ctx.server, "b": b}
    view = NodeSet({name: srv.url for name, srv in servers.items()})
    devices = [FollowingDevice(u["token"], view) for u in users]
    senders = [RetryingSender(u["token"], channel, view, f"{ctx.tag}-s{i}") for i, u in enumerate(users[: args.senders])]
    drains: dict[str, dict[str, Any]] = {}
    roll: dict[str, float] = {}
    window = ctx.window(None)

    async def roll_under_load() -> None:
        async with window:  # node a, steady, before the roll
            await trio.sleep(args.settle)
        roll["start"] = trio.current_time()
        for generation, (name, srv) in enumerate(servers.items(), start=2):
            view.down(name)
            drains[name] = await restart(srv, generation)
            view.up(name, srv.url)
            if name != "b":
                await trio.sleep(args.settle)
        roll["end"] = trio.current_time()
        await trio.sleep(args.settle)

    async def heads() -> list[int]:
        found = await trio.to_thread.run_sync(inbox_heads, ctx.dsn, [u["user_id"] for u in users])
        return [found[u["user_id"]] for u in users]

    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        with trio.fail_after(4 * args.settle + 2 * READY_TIMEOUT_S + 120):
            await under_load(devices, senders, args.rate / len(senders), roll_under_load, heads)
    finally:
        b_code = await trio.to_thread.run_sync(b.stop)
    load_cpu_pct = round(100 * (time.process_time() - cpu0) / (time.monotonic() - wall0), 1)

    deliver, before, during, waits, lag, ack = (Histogram() for _ in range(6))
    for device in devices:
        for due, latency in device.deliveries:
            deliver.add(latency)
            if due < roll["start"]:
                before.add(latency)
            elif due <= roll["end"]:
                during.add(latency)
        for wait in device.waits_s:
            waits.add(wait)
    for sender in senders:
        for wait in sender.waits_s:
            waits.add(wait)
        for late in sender.lag_s:
            lag.add(late)
        for took in sender.ack_s:
            ack.add(took)
    after_ms = sorted(ms_ for c in [*devices, *senders] for ms_ in c.after_ms)
    acked = {cmid for s in senders for cmid in s.acked}
    lost = sum(len(acked - {e["client_msg_id"] for e in d.events if e.get("kind") == "message"}) for d in devices)
    figures = {
        "offered_msg_per_s": args.rate,
        "acked": len(acked),
        "send_deliver_ms": deliver.summary_ms((50, 99)),
        "send_deliver_before_roll_ms": before.summary_ms((50, 99)),
        "send_deliver_during_roll_ms": during.summary_ms((50, 99)),
        "sender_lag_ms": lag.summary_ms((50, 99)),
        "send_ack_ms": ack.summary_ms((50, 99)),
        "client_wait_ms": waits.summary_ms((50, 99)),
        "after_ms": {"n": len(after_ms), "max": after_ms[-1] if after_ms else None},
        "drains": {name: {k: v for k, v in d.items() if k != "url"} for name, d in drains.items()},
        "retried_sends": sum(s.retries for s in senders),
        "roll_s": round(roll["end"] - roll["start"], 2),
        "load_generator_cpu_pct": load_cpu_pct,
    }
    sent = sum(len(s.lag_s) for s in senders)
    correctness: dict[str, Any] = {
        "lost": lost,
        "unacked": sent - len(acked),
        "duplicated": sum(d.duplicates() for d in devices),
        "out_of_order": sum(d.out_of_order for d in devices),
        "criteria_failed": [f"node {n} exited {d['exit_code']} on SIGTERM" for n, d in drains.items()
                            if d["exit_code"] != 0] + ([f"node b exited {b_code}"] if b_code not in (0, None) else []),
    }
    rows = [
        ("devices / senders / offered", f"{len(devices)} / {len(senders)} / {fmt(args.rate)} msg/s"),
        ("acked / retried sends", f"{len(acked)} / {figures['retried_sends']}"),
        ("send->deliver p50 / p99 / max (whole run)", ms(figures["send_deliver_ms"], "p50", "p99", "max")),
        ("send->deliver p50 / p99 / max (due before the roll)",
         ms(figures["send_deliver_before_roll_ms"], "p50", "p99", "max")),
        ("send->deliver p50 / p99 / max (due during the roll)",
         ms(figures["send_deliver_during_roll_ms"], "p50", "p99", "max")),
        ("send->ack p50 / p99 / max (whole run)", ms(figures["send_ack_ms"], "p50", "p99", "max")),
        ("senders behind their clock p50 / p99 / max", ms(figures["sender_lag_ms"], "p50", "p99", "max")),
        ("clients waited p50 / p99 / max (n)",
         ms(figures["client_wait_ms"], "p50", "p99", "max") + f" ({figures['client_wait_ms']['n']})"),
        ("after_ms asked (max)", f"{figures['after_ms']['max']} ms over {len(after_ms)} reconnect frames"),
        ("load generator CPU (this process, % of one core)", f"{load_cpu_pct} %"),
        ("drain / down (a; b)", "; ".join(f"{d['drain_s']} / {d['down_s']} s" for d in drains.values())),
    ]
    params = {"devices": len(devices), "senders": len(senders), "rate": args.rate, "settle": args.settle}
    return Outcome(params, figures, correctness, rows, window.figures(),
                   notes=["server CPU/RSS: node a, during the steady load before the roll"])

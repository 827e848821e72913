"""Two nodes on one PostgreSQL: cross-node vs same-node delivery, and failover after SIGKILL.

    python benchmarks/cluster.py --database-url URL [--pairs 100 --rate 500 --seconds 15]
                                 [--failover-clients 200]

1. **Delivery** (open loop): ``--pairs`` DM pairs, every sender on node A;
   half the receivers are on node A too (same-node), half on node B
   (cross-node, delivered through PostgreSQL's NOTIFY hint and a re-read).
   Each sender sends on a clock (total ``--rate`` msg/s); a message carries
   its due time, and its receiver (in this same process, one clock) records
   send->deliver. Reports p50/p99 for each kind and their ratio.
2. **Failover**: ``--failover-clients`` receivers follow their DMs on node B
   while senders on node A keep sending; node B is SIGKILLed; every receiver
   reconnects to node A after a random delay (up to 0.5 s, then exponential
   backoff) and syncs from its cursor. Reports the time from the SIGKILL until
   every receiver is synced on node A and has every message acknowledged
   before the kill, and checks
   every receiver saw every acknowledged message exactly once, in order.

Setup (users, tokens) is bulk SQL (benchmarks/seed.py); DMs are opened over
HTTP; the rest is the public WebSocket protocol. The database given is used
as a server: a fresh database is created on it for the run and dropped after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import seed  # noqa: E402
from benchmarks.database import _admin, with_database  # noqa: E402
from benchmarks.fixtures import open_dms  # noqa: E402
from benchmarks.server import ChatdServer  # noqa: E402
from benchmarks.stats import Histogram  # noqa: E402

DISCONNECTED = (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError)


class Receiver:
    """Follows one user's inbox (DM message events) across reconnects; checks order and uniqueness."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.cursor = 0
        self.last_seq = 0
        self.bad = 0
        self.latency = Histogram()
        self.synced_at = 0.0

    async def follow(self, ws_url: str, stop: trio.Event) -> None:
        headers = [(b"Authorization", f"Bearer {self.token}".encode())]
        async with open_websocket_url(ws_url, extra_headers=headers) as ws:
            json.loads(await ws.get_message())
            await ws.send_message(json.dumps({"type": "sync", "after": self.cursor}))
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    await stop.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") == "synced":
                        self.synced_at = trio.current_time()
                    if frame.get("type") != "event":
                        continue
                    if frame["inbox_seq"] != self.cursor + 1:
                        self.bad += 1
                    self.cursor = frame["inbox_seq"]
                    if frame["kind"] != "message":
                        continue
                    if frame["seq"] != self.last_seq + 1:
                        self.bad += 1
                    self.last_seq = frame["seq"]
                    due = float(frame["text"].split(" ", 1)[0])
                    self.latency.add(time.time() - due)


async def sender(ws_url: str, token: str, channel: int, period: float, stop_at: float, acked: list[int]) -> None:
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    async with open_websocket_url(ws_url, extra_headers=headers) as ws:
        await ws.get_message()
        n = 0
        next_due = trio.current_time() + random.random() * period

        async def reader() -> None:
            while True:
                frame = json.loads(await ws.get_message())
                if frame.get("type") == "ack":
                    acked.append(frame["seq"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            while next_due < stop_at:
                await trio.sleep_until(next_due)
                text = f"{time.time() - (trio.current_time() - next_due):.6f} cluster"
                await ws.send_message(json.dumps({"type": "send", "channel_id": channel,
                                                  "client_msg_id": f"m{n}", "text": text}))
                n += 1
                next_due += period
            with trio.move_on_after(10):
                while len(acked) < n:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def delivery(a: ChatdServer, b: ChatdServer, users: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    pairs = [(users[2 * i], users[2 * i + 1]) for i in range(args.pairs)]
    channels = await open_dms(a.url, pairs)
    receivers = [Receiver(r["token"]) for _, r in pairs]
    stop = trio.Event()
    period = args.pairs / args.rate
    async with trio.open_nursery() as nursery:
        for i, rec in enumerate(receivers):
            nursery.start_soon(rec.follow, (a if i % 2 == 0 else b).ws_url, stop)
        await trio.sleep(1)
        stop_at = trio.current_time() + args.seconds
        async with trio.open_nursery() as senders:
            for (s, _), channel in zip(pairs, channels):
                senders.start_soon(sender, a.ws_url, s["token"], channel, period, stop_at, [])
        await trio.sleep(1)
        stop.set()
    same, cross = Histogram(), Histogram()
    for i, rec in enumerate(receivers):
        (same if i % 2 == 0 else cross).merge(rec.latency)
    p99s, p99c = same.percentile_ms(99), cross.percentile_ms(99)
    return {
        "same_node_ms": {"p50": same.percentile_ms(50), "p99": p99s, "n": same.count},
        "cross_node_ms": {"p50": cross.percentile_ms(50), "p99": p99c, "n": cross.count},
        "out_of_order": sum(r.bad for r in receivers),
        "cross_over_same_p99": round(p99c / p99s, 2) if p99s and p99c else None,
    }


async def failover(a: ChatdServer, b: ChatdServer, users: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    count = args.failover_clients
    base = 2 * args.pairs
    pairs = [(users[base + 2 * i], users[base + 2 * i + 1]) for i in range(count)]
    channels = await open_dms(a.url, pairs)
    receivers = [Receiver(r["token"]) for _, r in pairs]
    acked: list[list[int]] = [[] for _ in pairs]
    killed_at = 0.0
    at_kill: list[int] = []
    caught_up_at: list[float] = [0.0] * count
    done = trio.Event()  # the end of the run: receivers stop following

    async def follow(i: int) -> None:
        url, attempt = b.ws_url, 0
        rec = receivers[i]
        while True:
            try:
                await rec.follow(url, done)
                return
            except* DISCONNECTED:
                pass
            url = a.ws_url
            await trio.sleep(random.random() * 0.5 * (2 ** min(attempt, 4)))
            attempt += 1

    async def watch_catch_up() -> None:
        while not all(caught_up_at):
            for i, rec in enumerate(receivers):
                # Reconnected elsewhere, synced, and holding all that was acknowledged before the kill.
                if not caught_up_at[i] and rec.synced_at > killed_at and rec.last_seq >= at_kill[i]:
                    caught_up_at[i] = trio.current_time()
            await trio.sleep(0.01)

    period = count / 100.0  # 100 msg/s in total while it happens
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(follow, i)
        await trio.sleep(1)
        stop_at = trio.current_time() + 6
        for i, ((s, _), channel) in enumerate(zip(pairs, channels)):
            nursery.start_soon(sender, a.ws_url, s["token"], channel, period, stop_at, acked[i])
        await trio.sleep(3)
        at_kill = [max(x, default=0) for x in acked]
        if not all(at_kill):
            raise RuntimeError(f"{at_kill.count(0)} DMs had no acknowledged message before the kill")
        os.kill(b.pid, signal.SIGKILL)
        killed_at = trio.current_time()
        with trio.move_on_after(120):
            await watch_catch_up()
        await trio.sleep_until(stop_at + 2)
        done.set()
    total = max(caught_up_at) - killed_at if all(caught_up_at) else None
    missing = sum(1 for i, rec in enumerate(receivers) if rec.last_seq < max(acked[i], default=0))
    return {
        "clients": count,
        "all_caught_up_after_kill_s": round(total, 2) if total is not None else None,
        "per_client_p50_s": round(sorted(t - killed_at for t in caught_up_at)[count // 2], 2) if total else None,
        "out_of_order_or_duplicated": sum(r.bad for r in receivers),
        "receivers_missing_acked": missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("CHATD_DATABASE_URL", ""), required=False)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--failover-clients", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url (a PostgreSQL server; a fresh database is made on it)")
    name = f"chatd_cluster_{uuid.uuid4().hex[:8]}"
    _admin(args.database_url, f'CREATE DATABASE "{name}"')
    dsn = with_database(args.database_url, name)
    with tempfile.TemporaryDirectory(prefix="chatd-cluster-") as tmp:
        a = ChatdServer(dsn, Path(tmp) / "a", env={"CHATD_NODE_NAME": "bench-a"})
        b = ChatdServer(dsn, Path(tmp) / "b", env={"CHATD_NODE_NAME": "bench-b"})
        try:
            a.start()
            b.start()
            users = seed.run(dsn, 2 * (args.pairs + args.failover_clients), "cl")
            result: dict[str, Any] = {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "params": vars(args) | {"json": None, "database_url": None},
                "delivery": trio.run(delivery, a, b, users, args),
                "failover": trio.run(failover, a, b, users, args),
            }
        finally:
            a.stop()
            if b.proc is not None and b.proc.poll() is None:
                b.stop()
            _admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    d, f = result["delivery"], result["failover"]
    lost = d["out_of_order"] + f["out_of_order_or_duplicated"] + f["receivers_missing_acked"]
    print(f"correctness: {lost} lost, duplicated or out of order")
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

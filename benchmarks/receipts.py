#!/usr/bin/env python3
"""Receipts and typing under load (issue 9): what acknowledging every message costs.

    python -m benchmarks.receipts [--rate 5] [--seconds 15] [--typing-seconds 10]

Part 1, receipts: one ``chatd serve``, a 50-member group, every member
connected and synced. ``--senders`` members send, open loop, ``--rate`` msg/s
in total; every member sends ``{"type": "receipt", "state": "read"}`` for
every message event it receives. Measured in the window: messages/s,
receipts/s (sent by clients), database transactions/s (``pg_stat_database.xact_commit``, read-only ones included, over the window), the
p50/p99 time from a message's send to its sender seeing the first ``read``
receipt event for it and to seeing all 49, and the write amplification:
rows written (``pg_stat_user_tables`` inserts + updates) and WAL bytes per
message, against the same run's plain phase (the same sends, nobody sends
receipts), which comes first.

Part 2, typing: two ``chatd serve`` nodes, 200 users in 20 channels of 10,
each connected to one of the nodes; one member per channel sends closed loop
(send, wait for the ack) for ``--typing-seconds`` with nobody typing, then as
long again while all 200 send ``typing`` every 0.5 s. A LISTEN connection
counts the NOTIFYs per second by kind (live hints ``e:``, send batches
``w:``); the plain sends' commit throughput is printed for both phases.

The machine is shared and noisy: compare the ratios within one run.
Load only against 127.0.0.1; every server started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import trio
from trio_websocket import ConnectionClosed, DisconnectionTimeout, open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import seed  # noqa: E402
from benchmarks.database import Databases  # noqa: E402
from benchmarks.fixtures import create_groups  # noqa: E402
from benchmarks.server import ChatdServer  # noqa: E402
from benchmarks.stats import Histogram  # noqa: E402

_DB_COUNTERS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables) AS rows,
       pg_current_wal_lsn() - '0/0'::pg_lsn AS wal
"""


def db_counters(dsn: str) -> dict[str, float]:
    async def run() -> dict[str, float]:
        conn = await asyncpg.connect(dsn)
        try:
            await asyncio.sleep(1.2)  # backends flush their table statistics within a second
            row = await conn.fetchrow(_DB_COUNTERS)
            assert row is not None
            return {k: float(row[k]) for k in ("commits", "rows", "wal")}
        finally:
            await conn.close()

    return asyncio.run(run())


class Member:
    """One connected member: acknowledges (or not) every message event it gets."""

    def __init__(self, creds: dict[str, Any], channel: int, members: int) -> None:
        self.user_id = creds["user_id"]
        self.token = creds["token"]
        self.channel = channel
        self.others = members - 1
        self.ack_reads = False
        self.ws: Any = None
        self.sent_at: dict[int, float] = {}  # my messages: seq -> send time
        self.pending: dict[str, float] = {}  # client_msg_id -> send time, until the ack
        self.readers: dict[int, int] = {}
        self.first_read = Histogram()
        self.all_read = Histogram()
        self.receipts_sent = 0
        self.acked = trio.Event()

    async def run(self, ws_url: str, ready: trio.Semaphore, stop: trio.Event) -> None:
        try:
            await self._run(ws_url, ready, stop)
        except (ConnectionClosed, DisconnectionTimeout):
            pass  # the closing handshake on a loaded machine; the figures are in already

    async def _run(self, ws_url: str, ready: trio.Semaphore, stop: trio.Event) -> None:
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {self.token}")]) as ws:
            self.ws = ws
            welcome = json.loads(await ws.get_message())
            await ws.send_message(json.dumps({"type": "sync", "after": welcome["inbox_head"]}))
            ready.release()
            while not stop.is_set():
                with trio.move_on_after(0.5):
                    await self._frame(json.loads(await ws.get_message()))

    async def _frame(self, frame: dict[str, Any]) -> None:
        now = time.monotonic()
        if frame["type"] == "ack":
            t0 = self.pending.pop(frame["client_msg_id"], None)
            if t0 is not None:
                self.sent_at[frame["seq"]] = t0
            self.acked.set()
        elif frame["type"] == "event" and frame["kind"] == "message" and frame["sender_id"] != self.user_id:
            if self.ack_reads:
                self.receipts_sent += 1
                await self.ws.send_message(json.dumps(
                    {"type": "receipt", "channel_id": frame["channel_id"], "seq": frame["seq"], "state": "read"}))
        elif frame["type"] == "event" and frame["kind"] == "receipt" and frame["state"] == "read":
            # A read watermark covers every seq up to it: count each of my messages it reaches.
            for seq, t0 in list(self.sent_at.items()):
                if seq <= frame["seq"] and frame["user_id"] != self.user_id:
                    n = self.readers.get(seq, 0) + 1
                    self.readers[seq] = n
                    if n == 1:
                        self.first_read.add(now - t0)
                    if n == self.others:
                        self.all_read.add(now - t0)
                        del self.sent_at[seq]
                        del self.readers[seq]

    async def send(self, cmid: str) -> None:
        self.pending[cmid] = time.monotonic()
        await self.ws.send_message(json.dumps(
            {"type": "send", "channel_id": self.channel, "client_msg_id": cmid, "text": "x" * 40}))


async def group_phase(ws_url: str, creds: list[tuple[int, dict[str, Any]]], channel: int, total: int,
                      senders: int, rate: float, seconds: float, reads: bool, tag: str,
                      start_at: float) -> dict[str, Any]:
    """One worker process's share of the members (``creds``: (global index, credentials));
    the first ``senders`` global indexes send. Starts at ``start_at`` (CLOCK_MONOTONIC)."""
    members = [(i, Member(c, channel, total)) for i, c in creds]
    for _, m in members:
        m.ack_reads = reads
    period = senders / rate
    sent = 0
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        ready = trio.Semaphore(0, max_value=len(members))
        for _, m in members:
            nursery.start_soon(m.run, ws_url, ready, stop)
        for _ in members:
            await ready.acquire()
        await trio.sleep(max(0.0, start_at - time.monotonic()))
        start = start_at
        end = start + seconds

        async def sender(m: Member, index: int) -> None:
            nonlocal sent
            due = start + period * index / senders
            n = 0
            while due < end:
                await trio.sleep(max(0.0, due - time.monotonic()))
                await m.send(f"{tag}-{m.user_id}-{n}")
                sent += 1
                n += 1
                due += period

        async with trio.open_nursery() as load:
            for i, m in members:
                if i < senders:
                    load.start_soon(sender, m, i)
        await trio.sleep(3.0)  # let the tail of receipts arrive
        stop.set()
    return {
        "sent": sent,
        "receipts": sum(m.receipts_sent for _, m in members),
        "first": [m.first_read.to_json() for _, m in members],
        "every": [m.all_read.to_json() for _, m in members],
    }


def _group_worker(out: Any, args: tuple[Any, ...]) -> None:
    out.put(trio.run(group_phase, *args))


def run_group(workers: int, ws_url: str, users: list[dict[str, Any]], channel: int, senders: int, rate: float,
              seconds: float, reads: bool, tag: str) -> dict[str, Any]:
    """The members spread over ``workers`` client processes (one Python process cannot
    read the thousands of receipt events per second a 50-member group makes)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 3.0 + len(users) * 0.02
    procs = []
    for w in range(workers):
        share = [(i, u) for i, u in enumerate(users) if i % workers == w]
        args = (ws_url, share, channel, len(users), senders, rate, seconds, reads, tag, start_at)
        proc = ctx.Process(target=_group_worker, args=(queue, args))
        proc.start()
        procs.append(proc)
    parts = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(10)
    return {
        "sent": sum(p["sent"] for p in parts),
        "receipts": sum(p["receipts"] for p in parts),
        "first": Histogram.merged(h for p in parts for h in p["first"]),
        "every": Histogram.merged(h for p in parts for h in p["every"]),
    }


async def typing_phase(urls: list[str], users: list[tuple[int, dict[str, Any]]], size: int, channels: list[int],
                       seconds: float, typing: bool, start_at: float) -> dict[str, float]:
    """One worker process's share of the users ((global index, credentials)); the
    window is ``start_at`` .. ``start_at + seconds`` (CLOCK_MONOTONIC)."""
    acked = 0
    typed = 0
    async with trio.open_nursery() as nursery:
        ready = trio.Semaphore(0, max_value=len(users))

        async def member(i: int, creds: dict[str, Any]) -> None:
            try:
                await member_loop(i, creds)
            except (ConnectionClosed, DisconnectionTimeout):
                pass

        async def member_loop(i: int, creds: dict[str, Any]) -> None:
            nonlocal acked, typed
            channel = channels[min(i // size, len(channels) - 1)]
            url = urls[i % 2].replace("http://", "ws://") + "/v1/ws"
            async with open_websocket_url(url, extra_headers=[("Authorization", f"Bearer {creds['token']}")]) as ws:
                await ws.get_message()
                ready.release()

                async def drain() -> None:
                    while True:
                        frame = json.loads(await ws.get_message())
                        if frame["type"] == "ack":
                            got.set()

                got = trio.Event()
                await trio.sleep(max(0.0, start_at - time.monotonic()))
                async with trio.open_nursery() as inner:
                    inner.start_soon(drain)
                    n = 0
                    while time.monotonic() < start_at + seconds:
                        if i % size == 0:  # this channel's sender: closed loop on the ack
                            got = trio.Event()
                            await ws.send_message(json.dumps({"type": "send", "channel_id": channel,
                                                              "client_msg_id": f"t{typing}-{n}", "text": "x"}))
                            n += 1
                            with trio.move_on_after(10):
                                await got.wait()
                                acked += 1
                            if typing and n % 20 == 0:
                                await ws.send_message(json.dumps({"type": "typing", "channel_id": channel}))
                        elif typing:
                            await ws.send_message(json.dumps({"type": "typing", "channel_id": channel}))
                            typed += 1
                            await trio.sleep(0.5)
                        else:
                            await trio.sleep(0.5)
                    inner.cancel_scope.cancel()

        for i, creds in users:
            nursery.start_soon(member, i, creds)
    return {"acked": acked, "typed": typed}


def _typing_worker(out: Any, args: tuple[Any, ...]) -> None:
    out.put(trio.run(typing_phase, *args))


def run_typing(workers: int, urls: list[str], users: list[dict[str, Any]], size: int, channels: list[int],
               seconds: float, typing: bool, start_at: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = []
    for w in range(workers):
        share = [(i, u) for i, u in enumerate(users) if i % workers == w]
        proc = ctx.Process(target=_typing_worker,
                           args=(queue, (urls, share, size, channels, seconds, typing, start_at)))
        proc.start()
        procs.append(proc)
    parts = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(10)
    return {"acked": sum(p["acked"] for p in parts), "typed": sum(p["typed"] for p in parts)}


def count_notifies(dsn: str, stop: threading.Event, counts: dict[str, int],
                   window: tuple[float, float]) -> threading.Thread:
    """Count the cluster's NOTIFYs by kind heard within ``window`` (CLOCK_MONOTONIC)."""
    async def run() -> None:
        conn = await asyncpg.connect(dsn)

        def heard(_c: object, _pid: int, _ch: str, payload: str) -> None:
            if not window[0] <= time.monotonic() <= window[1]:
                return
            kind = payload[:2] if payload[:2] in ("e:", "w:") else "other"
            counts[kind] = counts.get(kind, 0) + 1

        await conn.add_listener("chatd_inbox", heard)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return thread


def ms(h: Histogram) -> str:
    s = h.summary_ms()
    return f"{s.get('p50') or 0:.1f} / {s.get('p99') or 0:.1f} ms (n={s['n']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s offered in the group, in total")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4, help="client processes for part 1 (default 4)")
    parser.add_argument("--typing-seconds", type=float, default=10.0, help="each typing phase (0: skip part 2)")
    parser.add_argument("--typers", type=int, default=200, help="users in part 2 (default 200)")
    parser.add_argument("--channels", type=int, default=20, help="channels they are spread over (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatd-receipts-") as tmp_name:
        tmp = Path(tmp_name)
        with Databases(args.database_url, fresh=True, keep=False, tmp=tmp) as dbs, dbs.database("receipts") as dsn:
            server = ChatdServer(dsn, tmp / "node-a", env={"CHATD_NODE_NAME": "node-a"})
            url = server.start()
            try:
                users: list[Any] = seed.run(dsn, args.members, "r")
                (channel,) = trio.run(create_groups, url, [users], "receipts")
                print(f"part 1: {args.members}-member group, {args.senders} senders, {args.rate} msg/s offered, "
                      f"{args.seconds} s per phase")
                results = {}
                for reads in (False, True):
                    before = db_counters(dsn)
                    t0 = time.monotonic()
                    out = run_group(args.workers, server.ws_url, users, channel, args.senders, args.rate,
                                    args.seconds, reads, "r" if reads else "p")
                    wall = time.monotonic() - t0
                    after = db_counters(dsn)
                    receipts, first, every = out["receipts"], out["first"], out["every"]
                    d = {k: after[k] - before[k] for k in after}
                    results[reads] = (out, receipts, d, first, every, wall)
                    name = "with read receipts" if reads else "plain sends"
                    print(f"  {name}: messages/s {out['sent'] / args.seconds:.1f}, receipts/s "
                          f"{receipts / args.seconds:.1f}, DB transactions/s {d['commits'] / args.seconds:.1f}, "
                          f"rows/message {d['rows'] / max(1, out['sent']):.1f}, "
                          f"WAL KiB/message {d['wal'] / 1024 / max(1, out['sent']):.1f}")
                    if reads:
                        print(f"    send -> sender sees first read p50 / p99: {ms(first)}")
                        print(f"    send -> sender sees all {len(users) - 1} read p50 / p99: {ms(every)}")
                plain, withr = results[False], results[True]
                print(f"  write amplification with receipts: rows x"
                      f"{(withr[2]['rows'] / max(1, withr[0]['sent'])) / max(1, plain[2]['rows'] / max(1, plain[0]['sent'])):.1f}, "
                      f"WAL x{(withr[2]['wal'] / max(1, withr[0]['sent'])) / max(1, plain[2]['wal'] / max(1, plain[0]['sent'])):.1f}"
                      " per message")
            finally:
                server.stop()
            if args.typing_seconds <= 0:
                return 0
            nodes = [ChatdServer(dsn, tmp / f"node-{n}", env={"CHATD_NODE_NAME": f"node-{n}"}) for n in "bc"]
            urls = [n.start() for n in nodes]
            try:
                typers: list[Any] = seed.run(dsn, args.typers, "t")
                size = args.typers // args.channels
                groups = [typers[i * size:(i + 1) * size] for i in range(args.channels)]
                typers = typers[:size * args.channels]
                channels = trio.run(create_groups, urls[0], groups, "typing")
                print(f"part 2: two nodes, {len(typers)} users in {args.channels} channels of {size}, "
                      f"{args.typing_seconds} s per phase")
                for typing in (False, True):
                    counts: dict[str, int] = {}
                    stop = threading.Event()
                    start_at = time.monotonic() + 3.0 + len(typers) * 0.02
                    thread = count_notifies(dsn, stop, counts, (start_at, start_at + args.typing_seconds))
                    out = run_typing(args.workers, urls, typers, size, channels, args.typing_seconds, typing,
                                     start_at)
                    wall = args.typing_seconds
                    stop.set()
                    thread.join(5)
                    total = sum(counts.values())
                    print(f"  {'typing every 0.5 s' if typing else 'nobody typing'}: plain sends acked/s "
                          f"{out['acked'] / wall:.1f}, typing frames sent/s {out['typed'] / wall:.1f}, NOTIFYs/s {total / wall:.1f} "
                          f"(live e: {counts.get('e:', 0) / wall:.1f}, send batches w: {counts.get('w:', 0) / wall:.1f})")
            finally:
                for n in nodes:
                    n.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

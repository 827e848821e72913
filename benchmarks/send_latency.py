"""Closed-loop send benchmark: S senders, each in a DM with its own receiver.

A first, rough figure for the spine (the full suite is its own piece of work):
sends per second and send->ack / send->deliver latency with S concurrent
senders, beside the PostgreSQL ceiling measured in the same run on the same
server (single-row durable INSERTs per second from one connection).

It starts ``chatd serve`` as a separate process (against --database-url, or
an embedded PostgreSQL under a temporary data_dir), creates users and tokens
with the chatd CLI's own code in a helper process, and then talks only the
public protocol with trio-websocket clients (in this process, which never
imports trio_asyncio: importing it slows plain asyncio code ~2.8x).

    python benchmarks/send_latency.py --senders 50 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]

SETUP = r"""
import json, sys, trio
from chatd.db.bridge import Database, open_bridge
from chatd.db.store import Store
from chatd.services.auth import AuthService
from chatd.hub import Hub

async def main(dsn, n):
    async with open_bridge():
        db = await Database.connect(dsn, min_size=1, max_size=2)
        store = Store(db)
        auth = AuthService(store, Hub())
        out = []
        for i in range(n):
            user = await store.create_user(f"bench{i}-{trio.current_time():.0f}", f"Bench {i}", None, False)
            token, _ = await auth.issue_token(user.user_id, "bench")
            out.append({"user_id": user.user_id, "token": token})
        await db.close()
        print(json.dumps(out))

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pg_ceiling(dsn: str, seconds: float) -> float:
    """Single-row durable INSERTs per second from one connection (plain asyncio)."""
    conn = await asyncpg.connect(dsn)
    try:
        # A real (logged) table: TEMP tables skip the WAL and the fsync we want to measure.
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial PRIMARY KEY, body text)")
        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await conn.execute("INSERT INTO bench_ceiling (body) VALUES ('x')")
            count += 1
        await conn.execute("DROP TABLE bench_ceiling")
        return count / seconds
    finally:
        await conn.close()


class Server:
    def __init__(self, dsn: str, data_dir: str) -> None:
        env = dict(os.environ, CHATD_DATABASE_URL=dsn, CHATD_SERVER_PORT="0", CHATD_DATA_DIR=data_dir,
                   CHATD_LIMITS_SEND_RATE_PER_S="1000000", CHATD_LIMITS_SEND_BURST="1000000",
                   PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "chatd", "serve"], env=env, cwd=data_dir,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def run_load(url: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]], seconds: float) -> dict[str, Any]:
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    ack_lat: list[float] = []
    deliver_lat: list[float] = []
    sent_at: dict[str, float] = {}
    stop_at = trio.current_time() + seconds
    lost = 0

    async with httpx.AsyncClient(base_url=url) as client:
        channels = []
        for sender, receiver in pairs:
            r = await client.post("/v1/channels", json={"kind": "dm", "members": [receiver["user_id"]]},
                                  headers={"Authorization": f"Bearer {sender['token']}"})
            channels.append(r.json()["channel_id"])

    class Pair:
        def __init__(self) -> None:
            self.ready = trio.Event()
            self.caught_up = trio.Event()
            self.scope = trio.CancelScope()
            self.sent: int | None = None
            self.last_seq = 0

    async def receive(receiver: dict[str, Any], pair: Pair) -> None:
        nonlocal lost
        headers = [("Authorization", f"Bearer {receiver['token']}")]
        with pair.scope:
            async with open_websocket_url(ws_url, extra_headers=headers) as ws:
                head = json.loads(await ws.get_message())["inbox_head"]
                await ws.send_message(json.dumps({"type": "sync", "after": head}))
                while json.loads(await ws.get_message())["type"] != "synced":
                    pass
                pair.ready.set()
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") != "event":
                        continue
                    if frame["seq"] != pair.last_seq + 1:
                        lost += 1
                    pair.last_seq = frame["seq"]
                    started = sent_at.pop(frame["client_msg_id"], None)
                    if started is not None:
                        deliver_lat.append(trio.current_time() - started)
                    if pair.sent is not None and pair.last_seq >= pair.sent:
                        pair.caught_up.set()

    async def send(sender: dict[str, Any], channel: int, index: int, pair: Pair) -> None:
        await pair.ready.wait()
        async with open_websocket_url(ws_url, extra_headers=[("Authorization", f"Bearer {sender['token']}")]) as ws:
            await ws.get_message()
            n = 0
            while trio.current_time() < stop_at:
                cmid = f"{index}-{n}"
                started = trio.current_time()
                sent_at[cmid] = started
                await ws.send_message(json.dumps({"type": "send", "channel_id": channel,
                                                  "client_msg_id": cmid, "text": "benchmark message"}))
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame.get("type") == "ack":
                        break
                    if frame.get("type") == "error":
                        raise RuntimeError(frame)
                ack_lat.append(trio.current_time() - started)
                n += 1
        pair.sent = n
        if pair.last_seq < n:
            with trio.move_on_after(15):
                await pair.caught_up.wait()
        if pair.last_seq < n:
            lost += n - pair.last_seq
        pair.scope.cancel()

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index, ((sender, receiver), channel) in enumerate(zip(pairs, channels)):
            pair = Pair()
            nursery.start_soon(receive, receiver, pair)
            nursery.start_soon(send, sender, channel, index, pair)
    elapsed = min(trio.current_time() - began, seconds)
    return {"acks": len(ack_lat), "deliveries": len(deliver_lat), "elapsed_s": elapsed,
            "ack_ms": [x * 1000 for x in ack_lat], "deliver_ms": [x * 1000 for x in deliver_lat], "gaps": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--database-url", default=os.environ.get("CHATD_DATABASE_URL", ""))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        embedded = None
        dsn = args.database_url
        if not dsn:
            sys.path.insert(0, str(ROOT))
            from chatd.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(Path(tmp) / "var")
            dsn = embedded.acquire()
        try:
            ceiling = asyncio.run(pg_ceiling(dsn, 3.0))
            server = Server(dsn, tmp)
            try:
                setup = subprocess.run([sys.executable, "-c", SETUP, dsn, str(2 * args.senders)],
                                       capture_output=True, text=True, check=True, cwd=ROOT,
                                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
                users = json.loads(setup.stdout)
                pairs = [(users[2 * i], users[2 * i + 1]) for i in range(args.senders)]
                cpu0 = cpu_seconds(server.proc.pid)
                result = trio.run(run_load, server.url, pairs, args.seconds)
                cpu = cpu_seconds(server.proc.pid) - cpu0
                rss = rss_kib(server.proc.pid)
            finally:
                server.stop()
        finally:
            if embedded is not None:
                embedded.release()

    rate = result["acks"] / result["elapsed_s"]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "senders": args.senders,
        "seconds": round(result["elapsed_s"], 1),
        "sends_per_s": round(rate),
        "ack_ms": {p: round(percentile(result["ack_ms"], q), 2) for p, q in (("p50", 50), ("p99", 99), ("p999", 99.9))},
        "deliver_ms": {p: round(percentile(result["deliver_ms"], q), 2)
                       for p, q in (("p50", 50), ("p99", 99), ("p999", 99.9))},
        "delivered": result["deliveries"],
        "gaps": result["gaps"],
        "server_cpu_ms_per_send": round(cpu / max(1, result["acks"]) * 1000, 3),
        "server_rss_mib": round(rss / 1024, 1),
        "pg_ceiling_single_insert_per_s": round(ceiling),
        "ack_median_ms": round(statistics.median(result["ack_ms"]), 2) if result["ack_ms"] else None,
    }
    print(f"{'figure':32} value")
    for key, value in report.items():
        print(f"{key:32} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if result["gaps"]:
        raise SystemExit(f"FAILED: {result['gaps']} gaps in delivery")


if __name__ == "__main__":
    main()

"""What one ``GET /metrics`` costs the server with C connections registered on the node.

    python -m benchmarks.metrics_scrape --connections 10000 --scrapes 200

A real in-process :class:`chatd.server.Server` on an embedded PostgreSQL (the
pinned wheel's), scraped over HTTP through its own listener. The C connections
are registered with the node's hub as the scrape sees them (user, device,
delivery cursor) without sockets: a scrape reads only that registry, and this
machine cannot hold 10,000 real sockets open while others' work loads it
(the idle workload measures real ones, see benchmarks/README.md). Two cases:
*idle* (no event since the connections subscribed: the backlog walk skips
them) and *behind* (every user has an advance pending, the worst case of the
backlog walk). Prints wall and process CPU per scrape, p50/p99/p99.9, and
first the echo probe's round trip with no client traffic (``--echo-rounds``,
0.1 s apart instead of 5 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import trio

from chatd.embedded import EmbeddedPostgres
from chatd.models import InboxAdvance
from tests.support import RunningServer, running_server


class _Connection:
    """The hub's view of one connection (chatd.hub.Drainable)."""

    def __init__(self, user_id: int) -> None:
        self.user_id = self.device_id = user_id
        self.delivered: int | None = 0

    def drain(self, after_ms: int) -> None: ...

    def revoke(self) -> None: ...

    def push_message(self, message: object) -> None: ...


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(url: str, scrapes: int) -> tuple[list[float], list[float], int]:
    walls, cpus, size = [], [], 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for _ in range(scrapes):
            w, c = time.perf_counter(), time.process_time()
            answer = await client.get("/metrics")
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)  # server and client share this process: an upper bound
            size = len(answer.content)
    return walls, cpus, size


async def echo_rounds(srv: RunningServer, rounds: int) -> None:
    """The echo probe's round trip with no client traffic, ``rounds`` rounds 0.1 s apart."""
    probe = srv.services.echo
    probe.interval_s = 0.1
    times: list[float] = []
    last = None
    with trio.fail_after(rounds * 15):
        while len(times) < rounds:
            await trio.sleep(0.02)
            status = probe.status
            if status.at != last and status.ok:
                last = status.at
                assert status.roundtrip_s is not None
                times.append(status.roundtrip_s)
    probe.interval_s = 5.0
    print(f"echo   idle, {rounds} rounds: round trip ms p50/p99/p99.9 {_pct(times, .5) * 1e3:.2f}/"
          f"{_pct(times, .99) * 1e3:.2f}/{_pct(times, .999) * 1e3:.2f}, mean {sum(times) / len(times) * 1e3:.2f}")


async def main(args: argparse.Namespace, dsn: str) -> None:
    async with running_server(dsn) as srv:
        if args.echo_rounds:
            await echo_rounds(srv, args.echo_rounds)
        hub = srv.services.hub
        for user_id in range(1, args.connections + 1):
            hub.add_session(_Connection(user_id))
            hub.subscribe(user_id)
        for case in ("idle", "behind"):
            if case == "behind":
                hub.advance([InboxAdvance(u, 1) for u in range(1, args.connections + 1)])
            await _measure(srv.url, 5)  # warm up
            walls, cpus, size = await _measure(srv.url, args.scrapes)
            print(f"{case:6} C={args.connections:,} scrapes={args.scrapes} bytes={size:,}  "
                  f"wall ms p50/p99/p99.9 {_pct(walls, .5) * 1e3:.2f}/{_pct(walls, .99) * 1e3:.2f}/"
                  f"{_pct(walls, .999) * 1e3:.2f}  CPU ms p50/p99/p99.9 {_pct(cpus, .5) * 1e3:.2f}/"
                  f"{_pct(cpus, .99) * 1e3:.2f}/{_pct(cpus, .999) * 1e3:.2f}  "
                  f"throughput {args.scrapes / sum(walls):.0f} scrapes/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--echo-rounds", type=int, default=100, help="echo probe rounds measured first (0: none)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatd-scrape-") as tmp:
        pg = EmbeddedPostgres(Path(tmp))
        dsn = pg.acquire()
        try:
            trio.run(main, arguments, dsn)
        finally:
            pg.release()

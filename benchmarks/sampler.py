"""Measuring the server (and the machine) over a window of a run.

CPU comes from /proc/<pid>/stat at the window's two ends; RSS is sampled
every half second for its peak. The whole machine's busy share, the load
generator's CPU and PostgreSQL's (the postmaster and all its backends, when it
runs on this machine) are reported too: on a 2-core box where server,
PostgreSQL and clients share the cores, a figure means little without them.
PostgreSQL's CPU is the whole cluster's: on a shared development server it
includes other databases' work.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from benchmarks.proc import machine_jiffies, tree_cpu_seconds
from benchmarks.server import ChatdServer
from benchmarks.workers import WorkerPool

SAMPLE_EVERY_S = 0.5


class Window:
    """``async with Window(server, pool) as w:`` ... then ``w.figures()``."""

    def __init__(self, server: ChatdServer, pool: WorkerPool | None = None, postmaster: int | None = None) -> None:
        self.server = server
        self.pool = pool
        self.postmaster = postmaster
        self.rss_peak_kib = 0
        self._scope: trio.CancelScope | None = None
        self._nursery_cm: Any = None

    async def __aenter__(self) -> Window:
        self.started = time.monotonic()
        self.cpu0 = self._last_cpu = self.server.cpu_seconds()
        self.busy0, self.total0 = machine_jiffies()
        self.load0 = self.pool.cpu_seconds() if self.pool is not None else 0.0
        self.pg0 = self._pg_cpu()
        self.rss_peak_kib = self.server.rss_kib()
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._sample)
        self._scope = nursery.cancel_scope
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        assert self._scope is not None
        self._scope.cancel()
        try:
            self._measure_end()
        finally:
            # Always leave the nursery entered in __aenter__ (else Trio's nursery stack is corrupted and
            # the real error, e.g. the sampler's ServerError, is lost); its error wins over ours.
            suppress = bool(await self._nursery_cm.__aexit__(*exc))
        return suppress

    def _measure_end(self) -> None:
        self.ended = time.monotonic()
        self.busy1, self.total1 = machine_jiffies()
        self.load1 = self.pool.cpu_seconds() if self.pool is not None else 0.0
        self.pg1 = self._pg_cpu()
        try:
            self.cpu1 = self.server.cpu_seconds()
            self.rss_end_kib = self.server.rss_kib()
        except OSError:  # the server died (and was reaped) during the window: its last sample stands
            self.cpu1 = self._last_cpu
            self.rss_end_kib = 0
        self.rss_peak_kib = max(self.rss_peak_kib, self.rss_end_kib)

    def _pg_cpu(self) -> float | None:
        if self.postmaster is None:
            return None
        try:
            return tree_cpu_seconds(self.postmaster)
        except OSError:
            return None

    async def _sample(self) -> None:
        while True:
            await trio.sleep(SAMPLE_EVERY_S)
            self.server.check_alive()
            self._last_cpu = self.server.cpu_seconds()
            self.rss_peak_kib = max(self.rss_peak_kib, self.server.rss_kib())

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def server_cpu_s(self) -> float:
        return self.cpu1 - self.cpu0

    def figures(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        total = max(1, self.total1 - self.total0)
        return {
            "window_s": round(seconds, 2),
            "server_cpu_pct": round(self.server_cpu_s / seconds * 100, 1),
            "server_rss_mib": round(self.rss_end_kib / 1024, 1),
            "server_rss_peak_mib": round(self.rss_peak_kib / 1024, 1),
            "machine_busy_pct": round((self.busy1 - self.busy0) / total * 100, 1),
            "loadgen_cpu_pct": round((self.load1 - self.load0) / seconds * 100, 1),
            "postgres_cpu_pct": None if self.pg0 is None or self.pg1 is None
            else round((self.pg1 - self.pg0) / seconds * 100, 1),
        }


def background_busy_pct(seconds: float = 1.0) -> float:
    """How busy the machine is before the run starts (others' work skews every figure)."""
    busy0, total0 = machine_jiffies()
    time.sleep(seconds)
    busy1, total1 = machine_jiffies()
    return round((busy1 - busy0) / max(1, total1 - total0) * 100, 1)

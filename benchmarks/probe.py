"""The server's own view during a run: ``/metrics`` scrapes, their cost, and the echo probe's round trip.

Used by the idle workload (the cost of a scrape with C connections open) and
the steady workload (the echo round trip under load). Round trips come from
the ``chatd_echo_roundtrip_seconds`` histogram read before and after a window:
the mean is exact, p50/p99 are interpolated within buckets as Prometheus'
``histogram_quantile`` does (so they are only as fine as the buckets).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.server import ChatdServer

ECHO = "chatd_echo_roundtrip_seconds"


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        answer = await client.get("/metrics")
    answer.raise_for_status()
    return answer.text


def echo_histogram(text: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets (le, count), count, sum) of the echo histogram in a scrape."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != ECHO:
            continue
        for s in family.samples:
            if s.name == ECHO + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == ECHO + "_count":
                count = s.value
            elif s.name == ECHO + "_sum":
                total = s.value
    return sorted(buckets), count, total


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low_le, low_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return low_le
            return low_le + (le - low_le) * ((rank - low_n) / max(n - low_n, 1e-12))
        low_le, low_n = le, n
    return None


def echo_window(before: str, after: str) -> dict[str, Any]:
    """The echo rounds completed between two scrapes: how many, mean, p50 and p99 in ms."""
    b_buckets, b_count, b_sum = echo_histogram(before)
    a_buckets, a_count, a_sum = echo_histogram(after)
    prior = dict(b_buckets)
    delta = [(le, n - prior.get(le, 0.0)) for le, n in a_buckets]
    rounds = a_count - b_count
    out: dict[str, Any] = {"rounds": int(rounds)}
    if rounds > 0:
        out["mean_ms"] = round((a_sum - b_sum) / rounds * 1000, 2)
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            value = _quantile(q, delta)
            out[name] = None if value is None else round(value * 1000, 2)
    return out


async def scrape_cost(server: ChatdServer, scrapes: int, idle_cpu_per_s: float) -> dict[str, Any]:
    """Scrape back to back: wall time per scrape (client side) and the server's CPU per scrape:
    its CPU over the burst, less what it spends idle in as long (``idle_cpu_per_s``: the
    heartbeats of the open connections, measured just before), divided by the scrapes."""
    walls = []
    cpu0 = server.cpu_seconds()
    burst0 = time.perf_counter()
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        size = len(await scrape(server.url))
        walls.append(time.perf_counter() - started)
    cpu = max(0.0, server.cpu_seconds() - cpu0 - idle_cpu_per_s * (time.perf_counter() - burst0))
    walls.sort()
    return {
        "scrapes": scrapes,
        "wall_ms_p50": round(walls[len(walls) // 2] * 1000, 2),
        "wall_ms_max": round(walls[-1] * 1000, 2),
        "server_cpu_ms_per_scrape": round(cpu / scrapes * 1000, 2),
        "bytes": size,
    }

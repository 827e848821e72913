"""CPython's cyclic garbage collector, tuned for a server holding thousands of connections.

Each open WebSocket connection keeps ~160 objects the collector tracks (Trio
tasks, coroutines, cancel scopes, wsproto state). With the default thresholds
(700, 10, 10) young objects are promoted after a few hundred allocations, and
the oldest generation is collected whenever it has grown by a quarter: at
2,400 connections that is ~400,000 objects scanned with the event loop
stopped, 300-350 ms, several times a minute. Measured with the soak workload
(benchmarks/README.md, 2026-11-30): ``/healthz`` p99 357 ms with the defaults,
61-167 ms over two runs with this tuning (no full collection in the 60 s
window), ~50 ms once HTTP connections also break hypercorn's reference
cycles when they end (chatd.web.http_conn). Objects that die young are then freed before promotion, so the old
generation grows, and is scanned, far less often.

``gc.freeze()`` at start moves everything imported so far (~65,000 objects)
out of every later collection: they live as long as the process anyway.
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between young collections.
YOUNG_THRESHOLD = 20_000


def tune_for_serving() -> None:
    """Call once in ``chatd serve`` after the imports, before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

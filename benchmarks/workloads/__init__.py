"""The workloads, one module each, every one with both of its halves.

A workload module has the orchestrator's half (``add_arguments``,
``server_env``, ``orchestrate(ctx)``, run in the orchestrating process) and
the worker's half (``worker(job, link)``, run in each client worker process,
see benchmarks/workers.py), so the two ends of its line protocol sit side by
side. ``rolling`` drives its few clients in the orchestrating process and
has no worker half.
"""

NAMES = ("steady", "saturation", "fanout", "idle", "storm", "soak", "rolling", "push", "media", "search",
         "independent")

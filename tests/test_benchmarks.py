"""Smoke runs of every benchmark workload at a tiny size (benchmarks/README.md).

Each runs ``benchmarks/run.py`` as the user would, against a fresh database
of the test suite's PostgreSQL, and checks what a benchmark must never get
wrong: the correctness line (0 lost, 0 duplicated, 0 out of order), a zero
exit status, ``chatd verify`` passing, and a JSON file holding the figures.
Timings are never asserted: they depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Databases

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 60

#: Tiny sizes: a few users for a second or two each.
SMOKE_FLAGS: dict[str, list[str]] = {
    "steady": ["--users", "4", "--rate", "20", "--seconds", "1.5"],
    "independent": ["--users", "4", "--rate", "20", "--seconds", "1.5"],
    "saturation": ["--pairs", "4", "--start", "1", "--step-seconds", "0.6"],
    "fanout": ["--members", "6", "--senders", "2", "--seconds", "1.5"],
    "idle": ["--connections", "20", "--heartbeat", "1", "--idle-seconds", "1.5", "--settle-seconds", "0.3"],
    "storm": ["--clients", "20", "--behind", "3", "--group-size", "5", "--jitter", "0.2"],
    # Past the server's 10 s head timeout, so hostile sockets are closed (and reconnect) at least once;
    # the healthz p99 bound is lifted to 10 s: a smoke test never asserts on speed.
    "soak": ["--seconds", "14", "--rate", "20", "--users", "4", "--idle", "10", "--slowloris", "8",
             "--heartbeat", "2", "--healthz-every", "0.2", "--healthz-p99-ms", "10000"],
    "rolling": ["--devices", "4", "--senders", "2", "--rate", "20", "--settle", "1"],
    "push": ["--recipients", "8", "--concurrency", "4"],
    "media": ["--mb", "0.6", "--rounds", "2"],
    "search": ["--messages", "3000", "--channels", "30", "--member-of", "5", "--queries", "5", "--senders", "2",
               "--phase-seconds", "0.5", "--rounds", "1"],
}
#: Workloads whose clients run in the orchestrating process take no --workers.
NO_WORKERS = {"search"}
#: Longer than RUN_TIMEOUT_S for workloads whose window is long by design.
RUN_TIMEOUTS_S: dict[str, float] = {"soak": 120, "rolling": 120, "search": 240}

#: Figures each workload's JSON must carry (beside the ceiling and the server's).
FIGURES: dict[str, list[str]] = {
    "steady": ["achieved_msg_per_s", "delivered_msg_per_s", "send_ack_ms", "send_deliver_ms"],
    "independent": ["achieved_msg_per_s", "delivered_msg_per_s", "send_ack_ms", "send_deliver_ms"],
    "saturation": ["peak_acked_msg_per_s", "peak_delivered_msg_per_s", "peak_send_ack_ms", "steps"],
    "fanout": ["deliveries_per_s", "send_deliver_ms", "reach_everyone_ms"],
    "idle": ["connections", "rss_per_connection_kib", "idle_server_cpu_pct"],
    "storm": ["all_caught_up_s", "catch_up_ms", "events_delivered"],
    "soak": ["achieved_msg_per_s", "send_deliver_ms", "healthz_ms", "healthz_probes", "slowloris"],
    "rolling": ["send_deliver_ms", "send_deliver_during_roll_ms", "client_wait_ms", "drains"],
    "push": ["pushes_per_s", "sends_per_s", "enqueue_delivered_ms"],
    "media": ["upload_mb_per_s", "download_mb_per_s", "cp_mb_per_s"],
    "search": ["search", "saturation_with_index_msg_per_s", "saturation_without_index_msg_per_s", "seeding"],
}
CEILING = ["single_insert_tx_per_s_1conn", "single_insert_tx_per_s_8conn",
           "batched_insert_rows_per_s_1conn", "batched_insert_rows_per_s_8conn"]

#: WebSocket ceiling figures (benchmarks/ws_ceiling.py) measured beside the workloads that have that shape.
WS_CEILING: dict[str, list[str]] = {
    "fanout": ["fanout_deliveries_per_s", "fanout_written_per_s"],
    "idle": ["handshakes_per_s"],
    "storm": ["handshakes_per_s"],
}


def run_workload(name: str, dsn: str, results: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), name, *SMOKE_FLAGS[name],
         *([] if name in NO_WORKERS else ["--workers", "2"]), "--database-url", dsn, "--results-dir", str(results), "--ceiling-seconds", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUTS_S.get(name, RUN_TIMEOUT_S),
    )
    files = sorted(results.glob(f"*-{name}.json"))
    assert len(files) == 1, f"expected one JSON file, found {files}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done, json.loads(files[0].read_text())


@pytest.mark.parametrize("name", list(SMOKE_FLAGS))
def test_workload_smoke(name: str, databases: Databases, tmp_path: Path) -> None:
    done, report = run_workload(name, databases.fresh(), tmp_path)
    output = done.stdout + done.stderr[-3000:]
    assert "correctness: 0 lost, 0 duplicated, 0 out of order" in done.stdout, output
    assert done.returncode == 0, output
    assert report["passed"] is True and report["failures"] == [], report.get("failures")
    assert report["verify"] == "ok"
    assert report["correctness"]["lost"] == report["correctness"]["duplicated"] == 0
    assert report["correctness"]["out_of_order"] == 0
    for key in FIGURES[name]:
        assert report["figures"].get(key) is not None, f"{name}: no figure {key!r}"
    for key in CEILING:
        assert report["ceiling"][key] > 0, f"no ceiling figure {key!r}"
    for key in WS_CEILING.get(name, ()):
        assert report["ws_ceiling"].get(key, 0) > 0, f"{name}: no WS ceiling figure {key!r}: {report['ws_ceiling']}"
        assert report["figures"]["of_ws_ceiling"], f"{name}: no fraction of the WS ceiling"
    assert report["server"]["server_rss_mib"] > 0
    if name == "soak":
        figures = report["figures"]
        assert figures["healthz_failures"] == 0 and figures["healthz_ms"]["n"] > 0
        # The server closed hostile sockets that outlived its head timeout, and stayed up for everyone else.
        assert figures["slowloris"]["closed"] > 0, figures["slowloris"]
        assert figures["idle_connected"] == 10 and figures["pings"] > 0
    if name == "search":
        # Every kind of query was answered, and none leaked another channel's hit.
        assert all(f["errors"] == 0 and f["leaks"] == 0 and f["latency_ms"]["n"] == 5
                   for f in report["figures"]["search"].values())
        assert sum(f["mean_hits"] for f in report["figures"]["search"].values()) > 0


def test_receipts_benchmark_smoke(databases: Databases, tmp_path: Path) -> None:
    """benchmarks/receipts.py at a tiny size: both parts run and print their figures."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.receipts", "--database-url", databases.server_dsn, "--members", "6",
         "--senders", "2", "--rate", "4", "--seconds", "2", "--typing-seconds", "1.5", "--typers", "12",
         "--channels", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "with read receipts: messages/s" in out and "write amplification with receipts: rows x" in out, out
    assert "send -> sender sees first read p50 / p99" in out, out
    assert "typing every 0.5 s: plain sends acked/s" in out and "NOTIFYs/s" in out, out

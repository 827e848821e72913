"""One table on stdout and one JSON file per run.

The JSON is the record (``benchmarks/results/<date>-<time>-<workload>.json``,
git-ignored); the table is the same figures for a human, with the
PostgreSQL ceiling of the same run at the bottom, and the correctness line
last: ``0 lost, 0 duplicated, 0 out of order`` or a failure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

CEILING_ROWS = (
    ("PG single-row durable INSERT, 1 conn", "single_insert_tx_per_s_1conn", "tx/s"),
    ("PG single-row durable INSERT, 8 conns", "single_insert_tx_per_s_8conn", "tx/s"),
    ("PG batched INSERT (100 rows/tx), 1 conn", "batched_insert_rows_per_s_1conn", "rows/s"),
    ("PG batched INSERT (100 rows/tx), 8 conns", "batched_insert_rows_per_s_8conn", "rows/s"),
)

WS_CEILING_ROWS = (
    ("WS ceiling: fan-out to the same M, deliveries/s (clients' count)", "fanout_deliveries_per_s", "/s"),
    ("WS ceiling: fan-out, frames written/s (server's count)", "fanout_written_per_s", "/s"),
    ("WS ceiling: accepted + handshaken connections/s", "handshakes_per_s", "/s"),
)


def correctness_line(correctness: dict[str, Any]) -> str:
    return (
        f"{correctness.get('lost', '?')} lost, {correctness.get('duplicated', '?')} duplicated, "
        f"{correctness.get('out_of_order', '?')} out of order"
    )


def failures(correctness: dict[str, Any]) -> list[str]:
    """Why this run must fail (empty when it passes)."""
    out = []
    for key in ("lost", "duplicated", "out_of_order"):
        if correctness.get(key, 1):
            out.append(f"{correctness.get(key)} {key.replace('_', ' ')}")
    for key, what in (
        ("error_frames", "error frames from the server"),
        ("unacked", "sends never acknowledged"),
        ("dropped", "connections closed by the server"),
        ("not_connected", "connections that could not be opened"),
    ):
        if correctness.get(key):
            out.append(f"{correctness[key]} {what}")
    if correctness.get("not_caught_up"):
        out.append(f"{correctness['not_caught_up']} recipients not caught up in time")
    out.extend(correctness.get("criteria_failed", []))  # a workload's own pass criteria (soak: /healthz)
    return out


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [(label, value) for label, value in report.get("rows", [])]
    server = report.get("server", {})
    if server:
        rows.append(("server CPU (% of one core) / RSS end, peak",
                     f"{fmt(server.get('server_cpu_pct'))} % / {fmt(server.get('server_rss_mib'))}, "
                     f"{fmt(server.get('server_rss_peak_mib'))} MiB"))
        rows.append(("machine busy / load generator / PostgreSQL CPU",
                     f"{fmt(server.get('machine_busy_pct'))} % of {report['machine']['cpus']} cores / "
                     f"{fmt(server.get('loadgen_cpu_pct'))} / {fmt(server.get('postgres_cpu_pct'))} % of one core"))
    rows.append(("machine busy before the run (others' load)", f"{fmt(report.get('background_busy_pct'))} %"))
    ceiling = report.get("ceiling") or {}
    for label, key, unit in CEILING_ROWS:
        if key in ceiling:
            rows.append((label, f"{fmt(ceiling[key])} {unit}"))
    ws = report.get("ws_ceiling") or {}
    for label, key, unit in WS_CEILING_ROWS:
        if key in ws:
            rows.append((label, f"{fmt(ws[key])}{unit}"))
    if ws.get("error"):
        rows.append(("WS ceiling", f"not measured: {ws['error']}"))
    rows.append(("chatd verify", report.get("verify", "?")))
    width = max(len(label) for label, _ in rows)
    title = (f"{report['workload']}  {report['date']}  chatd {report.get('chatd_revision', '?')}  "
             f"({report['database']}, PostgreSQL {ceiling.get('postgres_version', '?')})")
    lines = [title, "-" * len(title)]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def write(report: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(report["started_at"]))
    path = results_dir / f"{stamp}-{report['workload']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def ms(summary: dict[str, Any], *keys: str) -> str:
    """'p50 / p99' style cell from a Histogram.summary_ms() dict."""
    return " / ".join(fmt(summary.get(k)) for k in keys) + " ms"

"""Smoke run of ``benchmarks/ws_paths.py`` (wsproto vs trio-websocket) at a tiny size.

Checks what the comparison must never get wrong: both implementations served
every frame (the clients compare each echo byte for byte and fail otherwise),
both were measured, and the summary follows from the rounds. Timings and the
verdict are not asserted: they depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ws_paths_smoke(tmp_path: Path) -> None:
    out = tmp_path / "ws_paths.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ws_paths", "--connections", "6", "--frames", "10", "--rounds", "1",
         "--workers", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["impl"] for r in result["rounds"]] == ["wsproto", "trio-websocket"]
    for r in result["rounds"]:
        assert r["frames"] == 60
        assert r["server_cpu_s"] >= 0 and r["seconds"] > 0
    ws, tws = (result["summary"][impl]["cpu_us_per_frame_mean"] for impl in ("wsproto", "trio-websocket"))
    if ws > 0:
        assert result["ratio"] == tws / ws
    assert result["verdict"] in ("use trio-websocket", "keep wsproto")
    assert "ratio trio-websocket / wsproto" in done.stdout

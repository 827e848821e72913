"""benchmarks/ws_ceiling.py: the machine's WebSocket ceiling measures what it says, at a tiny size."""

from __future__ import annotations

from benchmarks import ws_ceiling


def test_ws_ceiling_counts_every_frame_and_handshake() -> None:
    figures = ws_ceiling.run(connections=6, seconds=1.0, handshake_seconds=1.0, workers=2, batch=3, concurrency=4)
    assert figures["connections"] == 6 and figures["fanout_batch"] == 3
    # Frames were written to all six connections and every client counted its frames.
    assert figures["fanout_written_per_s"] > 0 and figures["fanout_deliveries_per_s"] > 0
    assert figures["handshakes_per_s"] > 0 and figures["handshake_failures"] == 0

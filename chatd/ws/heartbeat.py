"""The node's idle sweep: one task closes every connection silent for 3 x heartbeat.

PROTOCOL §3: a client that sends nothing for ``3 x heartbeat_s`` is closed.
Each session only notes the time of its client's last frame
(``Session.last_frame_at``, an attribute write); this task looks at all of
them every half heartbeat, so a silent client is closed between 3 and 3.5
heartbeats after its last frame. A timer per connection instead (a Trio
cancel scope whose deadline moves on every frame) costs deadline-heap work
per frame and per connection, and made the cost of a heartbeat grow with the
number of connections (benchmarks/README.md, idle).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from chatd.hub import Hub

log = logging.getLogger(__name__)

#: Heartbeats of silence after which a connection is closed (PROTOCOL §3).
IDLE_HEARTBEATS = 3


async def sweep_idle(hub: Hub, heartbeat_s: float, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Every ``heartbeat_s / 2``, close the connections silent for ``IDLE_HEARTBEATS x heartbeat_s``."""
    task_status.started()
    while True:
        await trio.sleep(heartbeat_s / 2)
        closed = hub.close_idle(trio.current_time() - IDLE_HEARTBEATS * heartbeat_s)
        if closed:
            log.debug("idle sweep closed %d connections", closed)

"""The node's idle sweep (chatd.ws.heartbeat): one pass closes silent connections, none else."""

from __future__ import annotations

import trio
import trio.testing

from chatd.hub import Hub
from chatd.models import Message
from chatd.ws.heartbeat import sweep_idle


class Conn:
    """A connection as the hub sees it, with the time of its client's last frame."""

    def __init__(self, user_id: int, last_frame_at: float) -> None:
        self.user_id = user_id
        self.device_id = user_id * 10
        self.last_frame_at = last_frame_at
        self.closed_idle = 0

    def close_idle(self) -> None:
        self.closed_idle += 1

    def drain(self, after_ms: int) -> None:
        raise AssertionError("not drained")

    def revoke(self) -> None:
        raise AssertionError("not revoked")

    def push_message(self, message: Message) -> None:
        raise AssertionError("nothing pushed")


def test_close_idle_closes_only_the_silent() -> None:
    hub = Hub()
    quiet, chatty, other_device = Conn(1, 10.0), Conn(2, 50.0), Conn(1, 49.0)
    for conn in (quiet, chatty, other_device):
        hub.add_session(conn)
    assert hub.close_idle(silent_since=40.0) == 1
    assert (quiet.closed_idle, chatty.closed_idle, other_device.closed_idle) == (1, 0, 0)


async def test_sweep_closes_between_3_and_3_5_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    hub = Hub()
    heartbeat = 10.0
    start = trio.current_time()
    silent = Conn(1, start)
    alive = Conn(2, start)
    hub.add_session(silent)
    hub.add_session(alive)
    async with trio.open_nursery() as nursery:
        await nursery.start(sweep_idle, hub, heartbeat)
        while trio.current_time() < start + 3.6 * heartbeat:
            alive.last_frame_at = trio.current_time()  # a client that pings keeps its connection
            closed_at = trio.current_time()
            if silent.closed_idle:
                break
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert silent.closed_idle == 1 and alive.closed_idle == 0
    assert 3 * heartbeat <= closed_at - start <= 3.5 * heartbeat + 0.5

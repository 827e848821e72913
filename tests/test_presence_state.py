"""The presence service's state machine, without sockets: this node's frames,
other nodes' hints, and the registry's word on dead or restarted nodes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from chatd import hints
from chatd.services.presence import PresenceService
from chatd.wire.outbound import ServerFrame


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []

    def presence(self, user_id: int, online: bool, last_seen_ms: int) -> None:
        self.sent.append((user_id, online))


class Watcher:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def offer(self, frame: ServerFrame) -> None:
        self.frames.append(frame.to_dict())


def service(timeout_s: float = 60) -> tuple[PresenceService, FakeBus]:
    bus = FakeBus()
    return PresenceService(None, bus, "a", timeout_s=timeout_s), bus  # type: ignore[arg-type]


async def test_local_frames_and_the_timeout() -> None:
    presence, bus = service(timeout_s=0.05)
    watcher = Watcher()
    presence.watch(watcher, [1, 2])
    presence.seen(1)
    presence.seen(1)  # already online: nothing new
    assert bus.sent == [(1, True)]
    assert [(f["user_id"], f["status"]) for f in watcher.frames] == [(1, "online")]
    time.sleep(0.06)
    presence.sweep()
    assert bus.sent == [(1, True), (1, False)]
    assert [(f["user_id"], f["status"]) for f in watcher.frames] == [(1, "online"), (1, "offline")]
    assert presence.state(1).last_seen is not None and not presence.state(1).online
    presence.unwatch(watcher)
    presence.seen(1)
    assert len(watcher.frames) == 2, "an unwatched connection is told nothing"


async def test_other_nodes_and_the_registry() -> None:
    presence, bus = service()
    watcher = Watcher()
    presence.watch(watcher, [5])
    now_ms = int(time.time() * 1000)
    presence.hinted(hints.Live("b", presence=((5, True, now_ms),)))
    presence.hinted(hints.Live("c", presence=((5, True, now_ms),)))
    assert [f["status"] for f in watcher.frames] == ["online"], "a second node holding it changes nothing"
    presence.hinted(hints.Live("b", presence=((5, False, now_ms),)))
    assert [f["status"] for f in watcher.frames] == ["online"]
    presence.hinted(hints.Live("a", presence=((5, False, now_ms),)))  # our own hint: ignored
    assert presence.is_online(5)
    # Node c stops heart-beating: the registry no longer lists it.
    long_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    presence.reconcile({"a": long_ago, "b": long_ago})
    assert [f["status"] for f in watcher.frames] == ["online", "offline"]
    assert not presence.is_online(5)
    # A node restarted under the same name drops what it held before.
    presence.hinted(hints.Live("b", presence=((5, True, now_ms),)))
    assert presence.is_online(5)
    presence.reconcile({"a": long_ago, "b": datetime.now(timezone.utc) + timedelta(seconds=5)})
    assert not presence.is_online(5)
    assert bus.sent == [], "other nodes' news is not published again"

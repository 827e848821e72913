"""The cluster hints and the in-process pieces that act on them, tested synchronously."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import trio

from chatd import hints
from chatd.hub import Hub, InboxSignal
from chatd.models import InboxAdvance, InboxEvent, Message
from chatd.services.ratelimit import RateLimiter, take_token


@pytest.mark.parametrize(
    ("payload", "hint"),
    [
        ("5:7", hints.InboxHeads((InboxAdvance(5, 7),))),
        ("w:1:2,3:40", hints.InboxHeads((InboxAdvance(1, 2), InboxAdvance(3, 40)), from_batch=True)),
        ("*", hints.WakeAll()),
        ("w:*", hints.WakeAll(from_batch=True)),
        ("c:9:100", hints.ChannelMessage(9, 100)),
        ("w:c:9:100", hints.ChannelMessage(9, 100, from_batch=True)),
        ("d:12", hints.DeviceRevoked(12)),
        ("u:4", hints.UserRevoked(4)),
    ],
)
def test_every_kind_parses(payload: str, hint: hints.Hint) -> None:
    assert hints.parse(payload) == hint


@pytest.mark.parametrize("hint", [hints.DeviceRevoked(3), hints.UserRevoked(8)])
def test_python_hints_round_trip(hint: hints.DeviceRevoked | hints.UserRevoked) -> None:
    assert hints.parse(hints.encode(hint)) == hint


@pytest.mark.parametrize("payload", ["", "w:", "x", "1", "1:", "1:2,", "1:2:3", "c:1", "c:x:1", "d:", "u:-1", "d:1:2", "1:2,a:b"])
def test_garbage_wakes_everyone(payload: str) -> None:
    assert hints.parse(payload) == hints.WakeAll()


class FakeSession:
    """A connection as the hub sees it: records what was asked of it."""

    def __init__(self, user_id: int, device_id: int) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.revoked = False
        self.drained: int | None = None
        self.offered: list[Message] = []
        self.frames: list[object] = []

    def drain(self, after_ms: int) -> None:
        self.drained = after_ms

    def revoke(self) -> None:
        self.revoked = True

    def push_message(self, message: Message) -> None:
        self.offered.append(message)

    def offer(self, frame: object) -> None:
        self.frames.append(frame)


def node_hint(payload: str) -> hints.InboxHeads | hints.WakeAll | hints.DeviceRevoked | hints.UserRevoked:
    hint = hints.parse(payload)
    assert not isinstance(hint, hints.ChannelMessage)
    return hint


def test_hub_applies_heads_and_skips_its_own_batches() -> None:
    hub = Hub()
    signal = hub.subscribe(1)
    first = signal.event
    hub.apply(node_hint("w:1:5"), from_this_node=True)
    assert not first.is_set() and signal.head == 0
    hub.apply(node_hint("w:1:5"), from_this_node=False)
    assert first.is_set() and signal.head == 5
    second = signal.event
    hub.apply(node_hint("1:6,2:9"), from_this_node=True)  # not a batch: applied
    assert second.is_set() and signal.head == 6
    third = signal.event
    hub.apply(node_hint("*"), from_this_node=False)
    assert third.is_set() and signal.head == 6
    hub.unsubscribe(1)
    assert 1 not in hub._signals


def test_hub_revocations_close_the_right_sessions() -> None:
    hub = Hub()
    a1, a2, b = FakeSession(1, 10), FakeSession(1, 11), FakeSession(2, 20)
    for s in (a1, a2, b):
        hub.add_session(s)
    hub.apply(hints.DeviceRevoked(11), from_this_node=False)
    assert (a1.revoked, a2.revoked, b.revoked) == (False, True, False)
    hub.apply(hints.UserRevoked(1), from_this_node=True)
    assert (a1.revoked, b.revoked) == (True, False)
    assert hub.connection_counts() == {1: 2, 2: 1}
    hub.remove_session(a1)
    hub.remove_session(a2)
    assert hub.connected_users() == [2]
    message = Message(1, 1, 2, "m", "hi", datetime.now(timezone.utc))
    hub.push_live([1, 2], message)
    assert b.offered == [message] and a1.offered == []
    hub.drain(500)
    assert b.drained == 500 and hub.draining.is_set()


def _event(inbox_seq: int) -> InboxEvent:
    return InboxEvent(inbox_seq=inbox_seq, kind="member", fields={"channel_id": 1})


def test_inbox_signal_serves_from_memory_only_without_gaps() -> None:
    signal = InboxSignal()
    assert signal.events_after(0) is None  # nothing known
    for seq in (1, 2, 3):
        signal.remember(_event(seq))
        signal.fire(seq)
    got = signal.events_after(1)
    assert got is not None and [e.inbox_seq for e in got] == [2, 3]
    assert signal.events_after(3) is None  # caught up: wait
    signal.fire(5)  # 4 and 5 committed elsewhere: not in memory, read the database
    assert signal.events_after(3) is None


async def test_rate_limiter_refills(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    assert [limiter.take(7) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take(7)
    assert wait == pytest.approx(0.5)
    assert limiter.take(8) == 0.0  # another key has its own bucket
    await trio.sleep(0.5)
    assert limiter.take(7) == 0.0
    assert limiter.take(7) > 0


def test_take_token_arithmetic() -> None:
    assert take_token(0.0, 0.0, 1.0, 2.0, 5.0) == (1.0, 0.0)
    assert take_token(5.0, 0.0, 100.0, 2.0, 5.0) == (4.0, 0.0)
    tokens, wait = take_token(0.0, 0.0, 0.25, 2.0, 5.0)
    assert tokens == 0.5 and wait == pytest.approx(0.25)


def test_live_hints_round_trip_and_split_under_the_payload_limit() -> None:
    hint = hints.Live(
        "node|a", typing=((3, 4), (3, 5)), presence=((7, True, 1_700_000_000_123), (8, False, 12)),
        receipts=((9, 7, "read", 40), (9, 8, "delivered", 41)),
    )
    (payload,) = hints.encode_live(hint)
    assert payload.startswith("e:node|a|")
    assert hints.parse(payload) == hint
    big = hints.Live("n", typing=tuple((c, 10**12 + c) for c in range(1, 2000)))
    payloads = hints.encode_live(big)
    assert len(payloads) > 1 and all(len(p) <= hints.MAX_PAYLOAD for p in payloads)
    parsed = [hints.parse(p) for p in payloads]
    assert all(isinstance(p, hints.Live) for p in parsed)
    assert tuple(t for p in parsed if isinstance(p, hints.Live) for t in p.typing) == big.typing
    assert hints.encode_live(hints.Live("n")) == []


@pytest.mark.parametrize("payload", ["e:n|", "e:n|x1", "e:n|t1", "e:n|p1,2,3", "e:n|r1,2,x,4", "e:n|t1,a"])
def test_garbage_live_hint_is_dropped_not_a_wake_up(payload: str) -> None:
    assert hints.parse(payload) == hints.Live("n")


def test_hub_pushes_live_frames_to_every_local_connection_of_the_users() -> None:
    from chatd.wire.outbound import TypingNotice

    hub = Hub()
    sessions = [FakeSession(1, 10), FakeSession(1, 11), FakeSession(2, 20)]
    for session in sessions:
        hub.add_session(session)
    frame = TypingNotice(5, 3)
    hub.push_frame([1, 7], frame)
    assert [s.frames for s in sessions] == [[frame], [frame], []]

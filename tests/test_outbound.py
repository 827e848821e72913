"""Server frames through the codec: typed frames in, the contract's bytes out."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import msgpack
import pytest

from chatd.models import Ack, InboxEvent, Message
from chatd.wire import codec
from chatd.wire.codec import WireFormat, encode, encode_event, encode_frame
from chatd.wire.outbound import AckFrame, ErrorFrame, LiveMessage, Pong, Reconnect, ServerFrame, Synced, Welcome

NOW = datetime(2026, 11, 30, 10, 0, 0, 123000, tzinfo=timezone.utc)
MESSAGE = Message(3, 7, 2, "c-1", "héllo \u2028 \"quoted\"", NOW)


def decode(data: str | bytes) -> Any:
    return json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Welcome(1, 2, "n", 30, 5), {"type": "welcome", "user_id": 1, "device_id": 2, "node": "n", "heartbeat_s": 30,
                                     "inbox_head": 5}),
        (Synced(9), {"type": "synced", "cursor": 9}),
        (AckFrame(Ack("c-1", 3, 7, NOW, False), "r1"),
         {"type": "ack", "client_msg_id": "c-1", "channel_id": 3, "seq": 7, "created_at": "2026-11-30T10:00:00.123Z",
          "state": "sent", "duplicate": False, "ref": "r1"}),
        (ErrorFrame("invalid", "bad", None), {"type": "error", "code": "invalid", "message": "bad"}),
        (ErrorFrame("rate_limited", "slow", "x", 250),
         {"type": "error", "code": "rate_limited", "message": "slow", "retry_after_ms": 250, "ref": "x"}),
        (Pong(), {"type": "pong"}),
        (Pong("t", "r"), {"type": "pong", "t": "t", "ref": "r"}),
        (Reconnect(120), {"type": "reconnect", "after_ms": 120}),
        (LiveMessage(MESSAGE), {"type": "message", **MESSAGE.to_json()}),
    ],
)
@pytest.mark.parametrize("fmt", list(WireFormat))
def test_frames_encode_to_the_contract(frame: ServerFrame, expected: dict[str, Any], fmt: WireFormat) -> None:
    assert decode(encode_frame(frame, fmt)) == expected


@pytest.mark.parametrize("size", [0, 1, 14, 15, 16, 300])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("fmt", list(WireFormat))
def test_events_are_byte_for_byte_the_whole_frame(size: int, shared: bool, fmt: WireFormat) -> None:
    """The spliced encoding equals encoding the whole frame, across msgpack's map header sizes."""
    fields = {f"k{i}": [i, "v\u00e9"] for i in range(size)}
    event = InboxEvent(41, "message", fields, shared=shared)
    assert encode_event(event, fmt) == encode(event.to_frame(), fmt)


@pytest.mark.parametrize("fmt", list(WireFormat))
def test_a_shared_body_is_encoded_once_for_every_recipient(fmt: WireFormat) -> None:
    fields = MESSAGE.to_json()
    events = [InboxEvent(seq, "message", fields, shared=True) for seq in range(1, 50)]
    first = codec._encoded_body(events[0], fmt)
    assert all(codec._encoded_body(e, fmt) is first for e in events[1:])
    frames = [decode(encode_event(e, fmt)) for e in events]
    assert [f["inbox_seq"] for f in frames] == list(range(1, 50))
    assert all(f == {"type": "event", "inbox_seq": f["inbox_seq"], "kind": "message", **fields} for f in frames)


def test_the_shared_body_cache_is_bounded() -> None:
    for i in range(codec._SHARED_BODIES_MAX + 100):
        encode_event(InboxEvent(i, "message", {"n": i}, shared=True), WireFormat.JSON)
    assert len(codec._SHARED_BODIES) <= codec._SHARED_BODIES_MAX

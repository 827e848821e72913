"""The pure WebSocket frame codec (PROTOCOL.md sections 1, 3, 4).

Plain synchronous tests: no trio, no database.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Final

import attrs
import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.wire import (
    SUBPROTOCOLS,
    ClientFrame,
    FrameError,
    PingFrame,
    PresenceSubscribeFrame,
    ReceiptFrame,
    SendFrame,
    SyncFrame,
    TypingFrame,
    WireFormat,
    choose_subprotocol,
    decode_client_frame,
    encode,
    error_frame,
)

JSON: Final = WireFormat.JSON
MSGPACK: Final = WireFormat.MSGPACK
BOTH: Final = pytest.mark.parametrize("fmt", [JSON, MSGPACK], ids=["json", "msgpack"])
ID_MAX: Final = 2**63 - 1
REF: Final = "r-1"

CLIENT_FRAME_TYPES: Final = (
    SyncFrame,
    SendFrame,
    ReceiptFrame,
    TypingFrame,
    PresenceSubscribeFrame,
    PingFrame,
)


def wire(obj: object, fmt: WireFormat) -> str | bytes:
    """A client's encoding of ``obj``, independent of the code under test."""
    if fmt is JSON:
        return json.dumps(obj)
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def decode_obj(obj: object, fmt: WireFormat) -> ClientFrame:
    return decode_client_frame(wire(obj, fmt), fmt)


def expect_error(data: str | bytes, fmt: WireFormat) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_client_frame(data, fmt)
    err = info.value
    assert len(err.message) < 200  # never echoes large input
    return err


# -- the malformed-frame table -------------------------------------------------

# One valid frame per type, each carrying a ref; cases mutate one field.
VALID: Final[dict[str, dict[str, object]]] = {
    "sync": {"type": "sync", "after": 5, "ref": REF},
    "send": {
        "type": "send",
        "channel_id": 7,
        "client_msg_id": "c-1",
        "text": "hello",
        "media_ids": [3, 4],
        "ref": REF,
    },
    "receipt": {"type": "receipt", "channel_id": 7, "seq": 9, "state": "read", "ref": REF},
    "typing": {"type": "typing", "channel_id": 7, "ref": REF},
    "presence_subscribe": {"type": "presence_subscribe", "user_ids": [1, 2], "ref": REF},
    "ping": {"type": "ping", "t": 12, "ref": REF},
}

_MISSING: Final = object()  # remove the key instead of setting it

ID_BAD: Final[list[object]] = [
    _MISSING, None, "1", True, False, 1.0, 1.5, -1, 0, 2**63, 10**30, [], {}, [1],
]
SEQ_BAD: Final[list[object]] = [_MISSING, None, "0", True, False, 0.0, 2.5, -1, 2**63, 10**30, [], {}]
CLIENT_MSG_ID_BAD: Final[list[object]] = [_MISSING, None, "", "x" * 65, 1, True, ["a"], {}, "a\x00b"]
TEXT_BAD: Final[list[object]] = [_MISSING, None, 1, 1.5, True, ["a"], {}, "a\x00", "\x00"]
STATE_BAD: Final[list[object]] = [_MISSING, None, "seen", "READ", "", 1, True, ["read"]]
MEDIA_IDS_BAD: Final[list[object]] = [
    "1", 1, True, {}, [0], [-1], [1.0], [True], [2**63], [10**30], [None], ["1"], [[1]],
    list(range(1, 12)), [1, 1],
]
USER_IDS_BAD: Final[list[object]] = [
    _MISSING, None, "1", 1, {}, [0], [-1], [1.0], [True], [2**63], [None], list(range(1, 502)),
]
PING_T_BAD: Final[list[object]] = [True, False, [], {}, [1], "x" * 65, 2**64, -(2**63) - 1]
REF_BAD: Final[list[object]] = ["x" * 65, 1, 1.5, True, [], {}, ["r"]]

FIELD_CASES: Final[list[tuple[str, str, list[object]]]] = [
    ("sync", "after", SEQ_BAD),
    ("send", "channel_id", ID_BAD),
    ("send", "client_msg_id", CLIENT_MSG_ID_BAD),
    ("send", "text", TEXT_BAD),
    ("send", "media_ids", MEDIA_IDS_BAD),
    ("receipt", "channel_id", ID_BAD),
    ("receipt", "seq", SEQ_BAD),
    ("receipt", "state", STATE_BAD),
    ("typing", "channel_id", ID_BAD),
    ("presence_subscribe", "user_ids", USER_IDS_BAD),
    ("ping", "t", PING_T_BAD),
]


def _mutated(frame_type: str, field: str, value: object) -> dict[str, object]:
    obj = dict(VALID[frame_type])
    if value is _MISSING:
        del obj[field]
    else:
        obj[field] = value
    return obj


def _case_id(frame_type: str, field: str, value: object) -> str:
    shown = "MISSING" if value is _MISSING else repr(value)
    if len(shown) > 24:
        shown = shown[:21] + "..."
    return f"{frame_type}.{field}={shown}"


def _msgpack_can_pack(obj: object) -> bool:
    try:
        msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return False
    return True


INVALID_FIELD_PARAMS: Final = [
    pytest.param(fmt, frame_type, field, value, id=f"{fmt.name.lower()}-{_case_id(frame_type, field, value)}")
    for fmt in (JSON, MSGPACK)
    for frame_type, field, values in FIELD_CASES
    for value in values
    # msgpack cannot carry ints past 2**64-1: those cases exist for JSON only
    if fmt is JSON or _msgpack_can_pack(_mutated(frame_type, field, value))
]


@pytest.mark.parametrize(("fmt", "frame_type", "field", "value"), INVALID_FIELD_PARAMS)
def test_invalid_field(fmt: WireFormat, frame_type: str, field: str, value: object) -> None:
    obj = _mutated(frame_type, field, value)
    err = expect_error(wire(obj, fmt), fmt)
    assert (err.code, err.ref) == ("invalid", REF)
    assert field in err.message


@BOTH
@pytest.mark.parametrize("frame_type", list(VALID))
@pytest.mark.parametrize("value", REF_BAD, ids=lambda v: repr(v)[:20])
def test_invalid_ref(fmt: WireFormat, frame_type: str, value: object) -> None:
    obj = dict(VALID[frame_type], ref=value)
    err = expect_error(wire(obj, fmt), fmt)
    assert (err.code, err.ref) == ("invalid", None)
    assert "ref" in err.message


@BOTH
@pytest.mark.parametrize(
    ("obj", "code", "ref"),
    [
        pytest.param(None, "bad_frame", None, id="null"),
        pytest.param(1, "bad_frame", None, id="number"),
        pytest.param("sync", "bad_frame", None, id="string"),
        pytest.param([], "bad_frame", None, id="empty-array"),
        pytest.param([{"type": "sync", "after": 0}], "bad_frame", None, id="array-of-frame"),
        pytest.param({}, "bad_frame", None, id="empty-object"),
        pytest.param({"after": 0, "ref": REF}, "bad_frame", REF, id="no-type"),
        pytest.param({"type": None, "ref": REF}, "bad_frame", REF, id="type-null"),
        pytest.param({"type": 1, "ref": REF}, "bad_frame", REF, id="type-int"),
        pytest.param({"type": True, "ref": REF}, "bad_frame", REF, id="type-bool"),
        pytest.param({"type": ["sync"], "ref": REF}, "bad_frame", REF, id="type-list"),
        pytest.param({"type": {"a": 1}}, "bad_frame", None, id="type-object"),
        pytest.param({"type": 1, "ref": "x" * 65}, "bad_frame", None, id="type-int-ref-too-long"),
        pytest.param({"type": "nope", "ref": REF}, "unknown_type", REF, id="unknown-type"),
        pytest.param({"type": "", "ref": REF}, "unknown_type", REF, id="empty-type"),
        pytest.param({"type": "SYNC", "after": 0}, "unknown_type", None, id="type-case"),
        pytest.param({"type": "ack", "ref": REF}, "unknown_type", REF, id="server-type"),
        pytest.param({"type": "x" * 5000, "ref": REF}, "unknown_type", REF, id="huge-type"),
        pytest.param({"type": "nope", "ref": "x" * 65}, "unknown_type", None, id="unknown-bad-ref"),
    ],
)
def test_bad_frame_shape(fmt: WireFormat, obj: object, code: str, ref: str | None) -> None:
    err = expect_error(wire(obj, fmt), fmt)
    assert (err.code, err.ref) == (code, ref)


def test_unknown_type_message_is_short_and_safe() -> None:
    assert "'nope'" in expect_error('{"type":"nope"}', JSON).message
    long_err = expect_error(json.dumps({"type": "y" * 5000}), JSON)
    assert "yyyy" not in long_err.message
    odd = expect_error('{"type":"\\ud800"}', JSON)
    assert odd.code == "unknown_type"
    odd.message.encode("utf-8")  # safe to send back


@BOTH
def test_message_kind_must_match_format(fmt: WireFormat) -> None:
    obj = {"type": "ping", "ref": REF}
    wrong: str | bytes = msgpack.packb(obj) if fmt is JSON else json.dumps(obj)
    err = expect_error(wrong, fmt)
    assert (err.code, err.ref) == ("bad_frame", None)
    # even a JSON document sent as a binary message on the JSON protocol
    if fmt is JSON:
        assert expect_error(json.dumps(obj).encode(), JSON).code == "bad_frame"


@pytest.mark.parametrize(
    ("text", "code", "ref"),
    [
        pytest.param("", "bad_frame", None, id="empty"),
        pytest.param(" ", "bad_frame", None, id="blank"),
        pytest.param("{", "bad_frame", None, id="truncated"),
        pytest.param('{"type":"ping",}', "bad_frame", None, id="trailing-comma"),
        pytest.param("{'type':'ping'}", "bad_frame", None, id="single-quotes"),
        pytest.param('{"type":"ping"} {}', "bad_frame", None, id="two-documents"),
        pytest.param('{"type":"ping"}x', "bad_frame", None, id="trailing-garbage"),
        pytest.param('\ufeff{"type":"ping"}', "bad_frame", None, id="bom"),
        pytest.param('{"type":"ping","t":NaN}', "bad_frame", None, id="nan-literal"),
        pytest.param('{"type":"ping","t":Infinity}', "bad_frame", None, id="infinity-literal"),
        pytest.param('{"type":"ping","t":-Infinity}', "bad_frame", None, id="neg-infinity"),
        pytest.param('{"type":"ping","x":NaN}', "bad_frame", None, id="nan-in-extra-key"),
        pytest.param('{"type":"ping","t":01}', "bad_frame", None, id="leading-zero"),
        pytest.param("[" * 100_000, "bad_frame", None, id="deep-unclosed"),
        pytest.param("[" * 50_000 + "]" * 50_000, "bad_frame", None, id="deep-array"),
        pytest.param('{"a":' * 20_000 + "1" + "}" * 20_000, "bad_frame", None, id="deep-object"),
        pytest.param(
            '{"type":"ping","ref":"r-1","x":' + "[" * 30_000 + "]" * 30_000 + "}",
            "bad_frame",
            None,
            id="deep-extra-key",
        ),
        pytest.param('{"type":"sync","after":1e400,"ref":"r-1"}', "invalid", REF, id="after-1e400"),
        pytest.param('{"type":"sync","after":-1e400,"ref":"r-1"}', "invalid", REF, id="after--1e400"),
        pytest.param('{"type":"sync","after":1E2,"ref":"r-1"}', "invalid", REF, id="after-exponent"),
        pytest.param('{"type":"sync","after":1.0,"ref":"r-1"}', "invalid", REF, id="after-1.0"),
        pytest.param('{"type":"sync","after":-0,"ref":"r-1"}', None, None, id="after-minus-zero-ok"),
        pytest.param('{"type":"typing","channel_id":1e400,"ref":"r-1"}', "invalid", REF, id="id-1e400"),
        pytest.param('{"type":"ping","t":1e400,"ref":"r-1"}', "invalid", REF, id="t-1e400"),
        pytest.param(
            '{"type":"sync","ref":"r-1","after":' + "9" * 60_000 + "}", "invalid", REF, id="after-60k-digits"
        ),
        pytest.param(
            '{"type":"ping","ref":"r-1","t":' + "9" * 60_000 + "}", "invalid", REF, id="t-60k-digits"
        ),
        pytest.param(
            '{"type":"ping","ref":"r-1","t":0.' + "1" * 60_000 + "}", "invalid", REF, id="t-60k-digit-float"
        ),
        pytest.param('{"type":"ping","x":' + "9" * 60_000 + "}", None, None, id="huge-number-ignored"),
        pytest.param(
            '{"type":"send","channel_id":1,"client_msg_id":"c","text":"a\\ud800b","ref":"r-1"}',
            "invalid",
            REF,
            id="text-lone-surrogate",
        ),
        pytest.param(
            '{"type":"send","channel_id":1,"client_msg_id":"\\udfff","text":"","ref":"r-1"}',
            "invalid",
            REF,
            id="client-msg-id-lone-surrogate",
        ),
        pytest.param(
            '{"type":"send","channel_id":1,"client_msg_id":"c","text":"a\\u0000b","ref":"r-1"}',
            "invalid",
            REF,
            id="text-escaped-nul",
        ),
        pytest.param('{"type":"ping","t":"\\ud800","ref":"r-1"}', "invalid", REF, id="t-lone-surrogate"),
        pytest.param('{"type":"ping","ref":"\\ud800"}', "invalid", None, id="ref-lone-surrogate"),
        pytest.param('{"type":"sync","type":"nope","after":0}', "unknown_type", None, id="dup-key-last-wins"),
    ],
)
def test_json_raw_text(text: str, code: str | None, ref: str | None) -> None:
    if code is None:
        assert isinstance(decode_client_frame(text, JSON), CLIENT_FRAME_TYPES)
        return
    err = expect_error(text, JSON)
    assert (err.code, err.ref) == (code, ref)


def _mp(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("data", "code", "ref"),
    [
        pytest.param(b"", "bad_frame", None, id="empty"),
        pytest.param(b"\xc1", "bad_frame", None, id="never-used-byte"),
        pytest.param(b"\x81\xa4type", "bad_frame", None, id="truncated"),
        pytest.param(b"\xdf\xff\xff\xff\xff", "bad_frame", None, id="huge-map-header"),
        pytest.param(b"\xdd\xff\xff\xff\xff", "bad_frame", None, id="huge-array-header"),
        pytest.param(_mp({"type": "ping"}) + b"\xc0", "bad_frame", None, id="extra-data"),
        pytest.param(_mp({1: "x", "type": "ping"}), "bad_frame", None, id="int-key"),
        pytest.param(_mp({b"type": "ping"}), "bad_frame", None, id="bytes-key-only"),
        pytest.param(_mp({"type": b"ping", "ref": REF}), "bad_frame", REF, id="type-bytes"),
        pytest.param(_mp({"type": msgpack.ExtType(1, b"x")}), "bad_frame", None, id="type-ext"),
        pytest.param(b"\x82\xa4type\xa4ping\xa3ref\xa2\xff\xfe", "bad_frame", None, id="bad-utf8-ref"),
        pytest.param(b"\x81\xa4type\xa3\xed\xa0\x80", "bad_frame", None, id="utf8-surrogate"),
        pytest.param(b"\x91" * 100_000 + b"\xc0", "bad_frame", None, id="deep-array"),
        pytest.param(b"\x81\xa1a" * 30_000 + b"\xc0", "bad_frame", None, id="deep-map"),
        pytest.param(b"\xd4\xff\x00", "bad_frame", None, id="bad-timestamp"),
        pytest.param(
            _mp({"type": "sync", "after": msgpack.ExtType(5, b"\x01"), "ref": REF}),
            "invalid",
            REF,
            id="after-ext",
        ),
        pytest.param(
            _mp({"type": "sync", "after": msgpack.Timestamp(1, 0), "ref": REF}),
            "invalid",
            REF,
            id="after-timestamp",
        ),
        pytest.param(_mp({"type": "sync", "after": b"\x01", "ref": REF}), "invalid", REF, id="after-bytes"),
        pytest.param(
            _mp({"type": "send", "channel_id": 1, "client_msg_id": b"c", "text": "", "ref": REF}),
            "invalid",
            REF,
            id="client-msg-id-bytes",
        ),
        pytest.param(
            _mp({"type": "send", "channel_id": 1, "client_msg_id": "c", "text": b"hi", "ref": REF}),
            "invalid",
            REF,
            id="text-bytes",
        ),
        pytest.param(_mp({"type": "ping", "t": b"x", "ref": REF}), "invalid", REF, id="t-bytes"),
        pytest.param(_mp({"type": "ping", "t": float("nan"), "ref": REF}), "invalid", REF, id="t-nan"),
        pytest.param(_mp({"type": "ping", "t": float("inf"), "ref": REF}), "invalid", REF, id="t-inf"),
        pytest.param(_mp({"type": "ping", "ref": b"r"}), "invalid", None, id="ref-bytes"),
        pytest.param(_mp({"type": "typing", "channel_id": 2**64 - 1, "ref": REF}), "invalid", REF, id="id-u64"),
        pytest.param(_mp({"type": "typing", "channel_id": -(2**63), "ref": REF}), "invalid", REF, id="id-i64-min"),
        pytest.param(
            _mp({"type": "ping", "x": msgpack.ExtType(3, b"zz"), "y": {b"k": b"v"}}),
            None,
            None,
            id="ext-in-extra-key-ignored",
        ),
    ],
)
def test_msgpack_raw_bytes(data: bytes, code: str | None, ref: str | None) -> None:
    if code is None:
        assert isinstance(decode_client_frame(data, MSGPACK), CLIENT_FRAME_TYPES)
        return
    err = expect_error(data, MSGPACK)
    assert (err.code, err.ref) == (code, ref)


def test_msgpack_accepts_bytes_like() -> None:
    data = _mp({"type": "sync", "after": 3})
    assert decode_client_frame(bytearray(data), MSGPACK) == SyncFrame(after=3)
    assert decode_client_frame(memoryview(data), MSGPACK) == SyncFrame(after=3)


# -- valid frames -------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"type": "sync", "after": 0}, SyncFrame(after=0), id="sync-0"),
        pytest.param({"type": "sync", "after": ID_MAX, "ref": REF}, SyncFrame(ID_MAX, REF), id="sync-max"),
        pytest.param(
            {"type": "send", "channel_id": 7, "client_msg_id": "c-1", "text": "hello"},
            SendFrame(7, "c-1", "hello", (), None),
            id="send-minimal",
        ),
        pytest.param(
            {
                "type": "send",
                "channel_id": ID_MAX,
                "client_msg_id": "é" * 64,
                "text": "héllo 👋\n\t\u2028",
                "media_ids": [3, ID_MAX, 1],
                "ref": "x" * 64,
            },
            SendFrame(ID_MAX, "é" * 64, "héllo 👋\n\t\u2028", (3, ID_MAX, 1), "x" * 64),
            id="send-full",
        ),
        pytest.param(
            {"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "", "media_ids": None, "ref": None},
            SendFrame(1, "c", "", (), None),
            id="send-nulls-are-absent",
        ),
        pytest.param(
            {"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "x", "media_ids": []},
            SendFrame(1, "c", "x", (), None),
            id="send-empty-media",
        ),
        pytest.param(
            {"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "x" * 50_000},
            SendFrame(1, "c", "x" * 50_000, (), None),
            id="send-long-text-left-to-service",
        ),
        pytest.param(
            {"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "t", "media_ids": list(range(1, 11))},
            SendFrame(1, "c", "t", tuple(range(1, 11)), None),
            id="send-10-media",
        ),
        pytest.param(
            {"type": "receipt", "channel_id": 2, "seq": 0, "state": "delivered", "ref": REF},
            ReceiptFrame(2, 0, "delivered", REF),
            id="receipt-delivered",
        ),
        pytest.param(
            {"type": "receipt", "channel_id": 2, "seq": ID_MAX, "state": "read"},
            ReceiptFrame(2, ID_MAX, "read", None),
            id="receipt-read",
        ),
        pytest.param({"type": "typing", "channel_id": 5, "ref": ""}, TypingFrame(5, ""), id="typing-empty-ref"),
        pytest.param(
            {"type": "presence_subscribe", "user_ids": []}, PresenceSubscribeFrame((), None), id="presence-empty"
        ),
        pytest.param(
            {"type": "presence_subscribe", "user_ids": [3, 1, 3, 2, 1]},
            PresenceSubscribeFrame((3, 1, 2), None),
            id="presence-dedup",
        ),
        pytest.param(
            {"type": "presence_subscribe", "user_ids": list(range(1, 501))},
            PresenceSubscribeFrame(tuple(range(1, 501)), None),
            id="presence-500",
        ),
        pytest.param({"type": "ping"}, PingFrame(None, None), id="ping-bare"),
        pytest.param({"type": "ping", "t": None, "ref": REF}, PingFrame(None, REF), id="ping-null-t"),
        pytest.param({"type": "ping", "t": -5}, PingFrame(-5, None), id="ping-int"),
        pytest.param({"type": "ping", "t": 2**64 - 1}, PingFrame(2**64 - 1, None), id="ping-u64-max"),
        pytest.param({"type": "ping", "t": -(2**63)}, PingFrame(-(2**63), None), id="ping-i64-min"),
        pytest.param({"type": "ping", "t": 1.5e300}, PingFrame(1.5e300, None), id="ping-float"),
        pytest.param({"type": "ping", "t": "x" * 64}, PingFrame("x" * 64, None), id="ping-str"),
        pytest.param({"type": "ping", "t": ""}, PingFrame("", None), id="ping-empty-str"),
        pytest.param(
            {"type": "ping", "future": {"nested": [1, {"a": None}]}, "also": 1.5},
            PingFrame(None, None),
            id="extra-keys-ignored",
        ),
    ],
)
def test_valid_frames(fmt: WireFormat, obj: dict[str, object], expected: ClientFrame) -> None:
    frame = decode_obj(obj, fmt)
    assert type(frame) is type(expected)
    assert frame == expected
    for value in attrs.astuple(frame):
        if isinstance(value, float):
            assert type(value) is float
        elif isinstance(value, int):
            assert type(value) is int


def test_ping_t_keeps_its_type() -> None:
    frame = decode_client_frame('{"type":"ping","t":1.0}', JSON)
    assert isinstance(frame, PingFrame) and type(frame.t) is float
    frame = decode_client_frame('{"type":"ping","t":1}', JSON)
    assert isinstance(frame, PingFrame) and type(frame.t) is int


def test_frames_are_frozen_and_slotted() -> None:
    frame = SyncFrame(after=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        frame.after = 2  # type: ignore[misc]
    assert not hasattr(frame, "__dict__")
    assert hash(SendFrame(1, "c", "t", (1,), None)) == hash(SendFrame(1, "c", "t", (1,), None))


@pytest.mark.parametrize(
    "build",
    [
        lambda: SyncFrame(after=-1),
        lambda: SyncFrame(after=True),
        lambda: SendFrame(0, "c", "t"),
        lambda: SendFrame(1, "", "t"),
        lambda: SendFrame(1, "c", "t", tuple(range(1, 12))),
        lambda: SendFrame(1, "c", "t", [1]),  # type: ignore[arg-type]
        lambda: ReceiptFrame(1, 1, "seen"),
        lambda: TypingFrame(2**63),
        lambda: PresenceSubscribeFrame(tuple(range(1, 502))),
        lambda: PingFrame(t=math.nan),
        lambda: PingFrame(t=b"x"),  # type: ignore[arg-type]
        lambda: PingFrame(ref="x" * 65),
    ],
)
def test_frame_invariants_guarded(build: Callable[[], object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


# -- subprotocols, errors, encoding ---------------------------------------------


def test_subprotocols() -> None:
    assert SUBPROTOCOLS == ("chatd.v1.json", "chatd.v1.msgpack")
    assert [fmt.value for fmt in WireFormat] == list(SUBPROTOCOLS)


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], JSON),
        ((), JSON),
        (["chatd.v1.json"], JSON),
        (["chatd.v1.msgpack"], MSGPACK),
        (["chatd.v1.msgpack", "chatd.v1.json"], MSGPACK),
        (["chatd.v1.json", "chatd.v1.msgpack"], JSON),
        (["other", "chatd.v1.msgpack"], MSGPACK),
        (["other"], None),
        (["chatd.v2.json", "CHATD.V1.JSON"], None),
        ([" chatd.v1.msgpack "], MSGPACK),
        ([""], JSON),
        ("chatd.v1.msgpack, chatd.v1.json", MSGPACK),
        ("", JSON),
    ],
)
def test_choose_subprotocol(offered: list[str], expected: WireFormat | None) -> None:
    assert choose_subprotocol(offered) is expected


def test_error_frame() -> None:
    assert error_frame("invalid", "bad seq") == {"type": "error", "code": "invalid", "message": "bad seq"}
    assert error_frame("invalid", "bad seq", "r") == {
        "type": "error",
        "code": "invalid",
        "message": "bad seq",
        "ref": "r",
    }
    err = FrameError("unknown_type", "unknown frame type", "r")
    assert (err.code, err.message, err.ref, str(err)) == ("unknown_type", "unknown frame type", "r", "unknown frame type")
    assert err.to_frame() == error_frame("unknown_type", "unknown frame type", "r")
    assert "ref" not in FrameError("bad_frame", "x").to_frame()


def test_encode_exact_output() -> None:
    frame = {"type": "ack", "ref": "é", "seq": 3, "duplicate": False, "media": [], "last_seen": None}
    text = encode(frame, JSON)
    assert text == '{"type":"ack","ref":"é","seq":3,"duplicate":false,"media":[],"last_seen":null}'
    packed = encode(frame, MSGPACK)
    assert isinstance(packed, bytes)
    assert msgpack.unpackb(packed, raw=False) == frame


@BOTH
def test_encode_accepts_any_mapping(fmt: WireFormat) -> None:
    from types import MappingProxyType

    frame = MappingProxyType({"type": "pong", "t": 1.5})
    assert decode_back(encode(frame, fmt), fmt) == {"type": "pong", "t": 1.5}


def test_encode_refuses_nan_in_json() -> None:
    with pytest.raises(ValueError):
        encode({"type": "pong", "t": math.nan}, JSON)


def decode_back(data: str | bytes, fmt: WireFormat) -> object:
    if fmt is JSON:
        assert isinstance(data, str)
        return json.loads(data)
    assert isinstance(data, bytes)
    return msgpack.unpackb(data, raw=False)


@BOTH
def test_error_answer_round_trips(fmt: WireFormat) -> None:
    """A bad frame's error answer encodes cleanly, carrying the ref."""
    err = expect_error(wire(dict(VALID["sync"], after=-1), fmt), fmt)
    assert decode_back(encode(err.to_frame(), fmt), fmt) == {
        "type": "error",
        "code": "invalid",
        "message": err.message,
        "ref": REF,
    }


# -- adversarial input stays cheap --------------------------------------------

LIMIT: Final = 65_536
ADVERSARIAL_JSON: Final[list[str]] = [
    '{"type":"sync","after":' + "9" * (LIMIT - 30) + "}",
    '{"type":"ping","t":1.' + "0" * (LIMIT - 30) + "1}",
    '{"type":"ping","t":1e' + "9" * (LIMIT - 30) + "}",
    "[" * LIMIT,
    '{"a":' * (LIMIT // 5),
    '{"type":"send","channel_id":1,"client_msg_id":"c","text":"' + "\\u0000" * (LIMIT // 7) + '"}',
    '{"type":"send","channel_id":1,"client_msg_id":"c","text":"' + "\\ud800" * (LIMIT // 7) + '"}',
    json.dumps({f"k{i}": i for i in range(LIMIT // 14)} | {"type": "sync"}, separators=(",", ":")),
    json.dumps({"type": "presence_subscribe", "user_ids": [1] * (LIMIT // 3)}),
    json.dumps({"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "t", "media_ids": [1] * 20_000}),
]
ADVERSARIAL_MSGPACK: Final[list[bytes]] = [
    b"\x91" * LIMIT,
    b"\xdc\xff\xff" + b"\xc0" * (LIMIT - 3),
    _mp({"type": "presence_subscribe", "user_ids": [2**63] * (LIMIT // 10)}),
    _mp({"type": "presence_subscribe", "user_ids": list(range(1, 7000))}),
    _mp({f"k{i}": None for i in range(LIMIT // 8)} | {"type": "sync"}),
    _mp({"type": "send", "channel_id": 1, "client_msg_id": "c", "text": "\x00" * (LIMIT - 60)}),
]


def test_adversarial_input_is_cheap() -> None:
    start = time.perf_counter()
    for text in ADVERSARIAL_JSON:
        assert len(text.encode()) <= LIMIT + 64
        with pytest.raises(FrameError):
            decode_client_frame(text, JSON)
    for data in ADVERSARIAL_MSGPACK:
        assert len(data) <= LIMIT + 64
        with pytest.raises(FrameError):
            decode_client_frame(data, MSGPACK)
    # Generous: each input takes well under a millisecond or two.
    assert time.perf_counter() - start < 1.0


# -- property-based -------------------------------------------------------------

FAST: Final = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

storable_char = st.characters(codec="utf-8")
ids = st.integers(1, ID_MAX)
seqs = st.integers(0, ID_MAX)
refs = st.none() | st.text(storable_char, max_size=64)

sync_frames = st.builds(SyncFrame, after=seqs, ref=refs)
send_frames = st.builds(
    SendFrame,
    channel_id=ids,
    client_msg_id=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=64),
    text=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300),
    media_ids=st.lists(ids, max_size=10, unique=True).map(tuple),
    ref=refs,
)
receipt_frames = st.builds(
    ReceiptFrame, channel_id=ids, seq=seqs, state=st.sampled_from(["delivered", "read"]), ref=refs
)
typing_frames = st.builds(TypingFrame, channel_id=ids, ref=refs)
presence_frames = st.builds(
    PresenceSubscribeFrame, user_ids=st.lists(ids, max_size=40, unique=True).map(tuple), ref=refs
)
ping_frames = st.builds(
    PingFrame,
    t=st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(storable_char, max_size=64),
    ref=refs,
)
client_frames = st.one_of(sync_frames, send_frames, receipt_frames, typing_frames, presence_frames, ping_frames)
formats = st.sampled_from([JSON, MSGPACK])


@FAST
@given(frame=client_frames, fmt=formats)
def test_round_trip_valid_frames(frame: ClientFrame, fmt: WireFormat) -> None:
    decoded = decode_client_frame(encode(frame.to_dict(), fmt), fmt)
    assert decoded == frame
    assert type(decoded) is type(frame)
    # ...and through an independent encoder too
    assert decode_obj(frame.to_dict(), fmt) == frame


def check_decode_contract(data: str | bytes, fmt: WireFormat) -> None:
    """Either a frame or a FrameError, with a well-formed error answer."""
    try:
        frame = decode_client_frame(data, fmt)
    except FrameError as err:
        assert err.code in {"bad_frame", "unknown_type", "invalid"}
        assert err.ref is None or (type(err.ref) is str and len(err.ref) <= 64)
        assert len(err.message) < 200
        for out_fmt in (JSON, MSGPACK):  # the answer always encodes
            encode(err.to_frame(), out_fmt)
    else:
        assert isinstance(frame, CLIENT_FRAME_TYPES)
        for out_fmt in (JSON, MSGPACK):  # an accepted frame is clean enough to echo
            assert decode_client_frame(encode(frame.to_dict(), out_fmt), out_fmt) == frame


any_char = st.characters()  # includes lone surrogates
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(any_char, max_size=20)
    | st.sampled_from(["sync", "send", "read", "delivered", "", "\x00"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(any_char, max_size=8), inner, max_size=6),
    max_leaves=30,
)
FIELD_NAMES: Final = [
    "type", "ref", "after", "channel_id", "client_msg_id", "text", "media_ids",
    "seq", "state", "user_ids", "t",
]
frame_types = st.sampled_from([*VALID, "nope"])
json_frame_like = st.builds(
    lambda frame_type, fields: {"type": frame_type, **fields},
    frame_types,
    st.dictionaries(st.sampled_from(FIELD_NAMES[1:]), json_values, max_size=6),
)
valid_frame_mutants = st.builds(
    lambda frame_type, field, value: dict(VALID[frame_type], **{field: value}),
    st.sampled_from(list(VALID)),
    st.sampled_from(FIELD_NAMES),
    json_values,
)


@FAST
@given(data=st.text(any_char, max_size=200) | st.binary(max_size=200), fmt=formats)
def test_arbitrary_text_and_bytes(data: str | bytes, fmt: WireFormat) -> None:
    check_decode_contract(data, fmt)


@FAST
@given(
    value=json_values | json_frame_like | valid_frame_mutants,
    ensure_ascii=st.booleans(),
    mutate=st.sampled_from(["none", "truncate", "nan-literal"]),
)
def test_arbitrary_json_values(value: object, ensure_ascii: bool, mutate: str) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)  # may emit NaN/Infinity and lone surrogates
    if mutate == "truncate":
        text = text[: len(text) // 2]
    elif mutate == "nan-literal" and text.endswith("}") and len(text) > 2:
        text = text[:-1] + ',"x":NaN}'
    check_decode_contract(text, JSON)


mp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.floats(width=32)
    | st.text(any_char, max_size=20)  # lone surrogates packed with surrogatepass
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
    | st.sampled_from(["sync", "send", "read", ""])
)
mp_keys = st.text(max_size=8) | st.binary(max_size=4) | st.integers(-5, 5) | st.sampled_from(FIELD_NAMES)
mp_values = st.recursive(
    mp_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(mp_keys, inner, max_size=6),
    max_leaves=30,
)
mp_frame_like = st.builds(
    lambda frame_type, fields: {"type": frame_type, **fields},
    frame_types | st.binary(max_size=6) | st.integers(),
    st.dictionaries(st.sampled_from(FIELD_NAMES[1:]), mp_values, max_size=6),
)


@FAST
@given(value=mp_values | mp_frame_like | valid_frame_mutants, cut=st.integers(0, 3))
def test_arbitrary_msgpack_values(value: object, cut: int) -> None:
    try:
        data = msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass")
    except (OverflowError, ValueError, TypeError):
        return  # not representable in msgpack (e.g. a huge int from the JSON strategy)
    if cut:
        data = data[: len(data) * cut // 4]
    check_decode_contract(data, MSGPACK)


server_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(storable_char, max_size=30)
)
server_values = st.recursive(
    server_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(storable_char, max_size=10), inner, max_size=5),
    max_leaves=25,
)
server_frames = st.builds(
    lambda frame_type, fields: {**fields, "type": frame_type},
    st.sampled_from(["welcome", "event", "synced", "ack", "presence", "pong", "error", "reconnect"]),
    st.dictionaries(st.text(storable_char, max_size=12), server_values, max_size=8),
)


@FAST
@given(frame=server_frames)
def test_encode_round_trips(frame: dict[str, object]) -> None:
    text = encode(frame, JSON)
    assert isinstance(text, str)
    assert json.loads(text) == frame
    text.encode("utf-8")  # always sendable as a text message
    packed = encode(frame, MSGPACK)
    assert isinstance(packed, bytes)
    assert msgpack.unpackb(packed, raw=False) == frame

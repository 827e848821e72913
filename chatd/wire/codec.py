"""The WebSocket frame codec: sans-I/O, no trio.

PROTOCOL.md sections 1 and 3. ``decode_client_frame`` is the one boundary
where client data becomes typed frames: it either returns a frame from
:mod:`chatd.wire.frames`, every field validated, or raises :class:`FrameError`
carrying the contract error code (``bad_frame``, ``unknown_type`` or
``invalid``) and, when it could be read, the frame's ``ref``. It raises
nothing else, whatever the input.

``encode`` turns a server frame (a mapping) into one WebSocket message: a
``str`` (text message) for JSON, ``bytes`` (binary message) for msgpack.

The frame size cap (``limits.max_frame_bytes``) is the transport's job and is
enforced before decoding. Within it, decoding is linear in the input: no
number is converted from more than a few dozen digits, and nesting depth is
bounded by the parsers (deep input is a ``bad_frame``).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, NoReturn, TypeAlias

import msgpack  # type: ignore[import-untyped, unused-ignore]  # no stubs published

from chatd.limits import is_client_msg_id
from chatd.models import InboxEvent
from chatd.wire.frames import (
    ID_MAX,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_MEDIA_IDS,
    MAX_PING_T_CHARS,
    MAX_PRESENCE_USER_IDS,
    MAX_REF_CHARS,
    PING_T_INT_MAX,
    PING_T_INT_MIN,
    RECEIPT_STATES,
    ClientFrame,
    PingFrame,
    PresenceSubscribeFrame,
    ReceiptFrame,
    SendFrame,
    SyncFrame,
    TypingFrame,
)
from chatd.wire.outbound import ErrorFrame, ServerFrame

__all__ = [
    "SUBPROTOCOLS",
    "FrameError",
    "FrameErrorCode",
    "WireFormat",
    "choose_subprotocol",
    "decode_client_frame",
    "encode",
    "error_frame",
    "encode_event",
    "encode_frame",
]


class WireFormat(enum.Enum):
    """A negotiated subprotocol; the value is its ``Sec-WebSocket-Protocol`` token."""

    JSON = "chatd.v1.json"
    MSGPACK = "chatd.v1.msgpack"

    @property
    def is_binary(self) -> bool:
        """True when frames of this format travel as binary messages."""
        return self is WireFormat.MSGPACK


SUBPROTOCOLS: Final[tuple[str, ...]] = tuple(fmt.value for fmt in WireFormat)
_BY_TOKEN: Final[Mapping[str, WireFormat]] = {fmt.value: fmt for fmt in WireFormat}


def choose_subprotocol(offered: Sequence[str]) -> WireFormat | None:
    """Pick the wire format for a WebSocket upgrade.

    JSON when nothing is offered; the first offered that we support otherwise
    (in client's order); None when the client offers only unknown ones.

    Tokens are matched exactly (case-sensitive, RFC 6455) after stripping
    surrounding whitespace; empty entries are ignored. A raw header value
    (one ``str``) is split on commas. When nothing was offered the caller must
    not send a ``Sec-WebSocket-Protocol`` header in its answer; when None is
    returned the caller refuses the upgrade (or answers without a protocol,
    which a client treats as a failed negotiation).
    """
    tokens = offered.split(",") if isinstance(offered, str) else offered
    seen_any = False
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        seen_any = True
        fmt = _BY_TOKEN.get(token)
        if fmt is not None:
            return fmt
    return None if seen_any else WireFormat.JSON


# -- errors -------------------------------------------------------------------

FrameErrorCode: TypeAlias = Literal["bad_frame", "unknown_type", "invalid"]


class FrameError(Exception):
    """A client frame that cannot be accepted; the connection stays open.

    ``code`` is the contract error code, ``message`` human text that never
    echoes more than a few characters of the input, ``ref`` the frame's
    ``ref`` when it could be read (a str of at most 64 chars), for the
    ``error`` answer.
    """

    code: FrameErrorCode
    message: str
    ref: str | None

    def __init__(self, code: FrameErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref

    def __repr__(self) -> str:
        return f"FrameError({self.code!r}, {self.message!r}, ref={self.ref!r})"

    def to_frame(self) -> dict[str, object]:
        """The ``error`` server frame answering the bad client frame."""
        return error_frame(self.code, self.message, self.ref)


def error_frame(code: str, message: str, ref: str | None = None) -> dict[str, object]:
    """``{"type": "error", "code", "message"}`` plus ``"ref"`` only when not None."""
    return ErrorFrame(code, message, ref).to_dict()


class _FieldError(Exception):
    """Internal: a field is invalid; turned into FrameError("invalid", ..., ref)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- parsing (bytes/str -> plain values) -------------------------------------


class _Unrepresentable:
    """Stands for a JSON number too long to be in range of any field.

    Converting many-thousand-digit numbers is slow (and Python refuses past
    4300 digits), so the parser replaces them with this marker; a field check
    then reports the field as ``invalid``, an ignored extra key stays ignored.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unrepresentable number>"


_UNREPRESENTABLE: Final = _Unrepresentable()
# Longest in-range literal: "-18446744073709551616" (21 chars); floats may
# carry more digits than they keep, so allow a generous margin.
_MAX_INT_LITERAL: Final = 40
_MAX_FLOAT_LITERAL: Final = 100


def _parse_int(literal: str) -> int | _Unrepresentable:
    if len(literal) > _MAX_INT_LITERAL:
        return _UNREPRESENTABLE
    return int(literal)


def _parse_float(literal: str) -> float | _Unrepresentable:
    # "1e400" parses to inf: kept, and rejected by the field checks.
    if len(literal) > _MAX_FLOAT_LITERAL:
        return _UNREPRESENTABLE
    return float(literal)


def _reject_constant(name: str) -> NoReturn:
    # NaN, Infinity, -Infinity are not JSON.
    raise ValueError(f"{name} is not valid JSON")


_JSON_DECODER: Final = json.JSONDecoder(
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_reject_constant,
)


def _parse(data: str | bytes | bytearray | memoryview, fmt: WireFormat) -> object:
    if fmt is WireFormat.JSON:
        if not isinstance(data, str):
            raise FrameError("bad_frame", "chatd.v1.json frames must be text messages")
        try:
            return _JSON_DECODER.decode(data)
        except Exception:  # JSONDecodeError, RecursionError, ...: all mean "not parseable"
            raise FrameError("bad_frame", "frame is not valid JSON") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError("bad_frame", "chatd.v1.msgpack frames must be binary messages")
    try:
        # raw=False: strings must be valid UTF-8; strict_map_key: only str/bytes
        # keys; size limits default to the input length; depth is bounded by the
        # C unpacker's stack (StackError).
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # ExtraData, FormatError, StackError, UnicodeDecodeError, ...
        raise FrameError("bad_frame", "frame is not valid msgpack") from None


# -- field checks (plain values -> typed values) ------------------------------

_Fields: TypeAlias = dict[object, object]


def _is_storable(text: str) -> bool:
    """True when ``text`` encodes to UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _required(fields: _Fields, name: str) -> object:
    value = fields.get(name)
    if value is None:
        raise _FieldError(f"{name} is required")
    return value


def _id_value(value: object, name: str) -> int:
    if type(value) is not int or not 1 <= value <= ID_MAX:
        raise _FieldError(f"{name} must be an integer from 1 to {ID_MAX}")
    return value


def _id(fields: _Fields, name: str) -> int:
    return _id_value(_required(fields, name), name)


def _seq(fields: _Fields, name: str) -> int:
    value = _required(fields, name)
    if type(value) is not int or not 0 <= value <= ID_MAX:
        raise _FieldError(f"{name} must be an integer from 0 to {ID_MAX}")
    return value


def _id_list(fields: _Fields, name: str, max_len: int, *, required: bool) -> list[int]:
    value = fields.get(name)
    if value is None:
        if required:
            raise _FieldError(f"{name} is required")
        return []
    if type(value) is not list:
        raise _FieldError(f"{name} must be a list of ids")
    if len(value) > max_len:
        raise _FieldError(f"{name} must hold at most {max_len} ids")
    for item in value:
        _id_value(item, f"each of {name}")
    return value


def _ref(value: object) -> str | None:
    """The frame's ``ref`` when readable (a storable str of <= 64 chars)."""
    if type(value) is str and len(value) <= MAX_REF_CHARS and _is_storable(value):
        return value
    return None


def _decode_sync(fields: _Fields, ref: str | None) -> SyncFrame:
    return SyncFrame(after=_seq(fields, "after"), ref=ref)


def _decode_send(fields: _Fields, ref: str | None) -> SendFrame:
    channel_id = _id(fields, "channel_id")

    client_msg_id = _required(fields, "client_msg_id")
    if (
        type(client_msg_id) is not str
        or not is_client_msg_id(client_msg_id)
        or not _is_storable(client_msg_id)
    ):
        raise _FieldError(
            f"client_msg_id must be a string of 1 to {MAX_CLIENT_MSG_ID_CHARS} characters"
            " (no NUL, valid Unicode)"
        )

    text = _required(fields, "text")
    if type(text) is not str:
        raise _FieldError("text must be a string")
    if "\x00" in text:
        raise _FieldError("text must not contain NUL characters")
    if not _is_storable(text):
        raise _FieldError("text must be valid Unicode (no lone surrogates)")

    media_ids = _id_list(fields, "media_ids", MAX_MEDIA_IDS, required=False)
    if len(set(media_ids)) != len(media_ids):
        raise _FieldError("media_ids must not repeat an id")

    reply_to = None if fields.get("reply_to") is None else _id(fields, "reply_to")

    return SendFrame(
        channel_id=channel_id,
        client_msg_id=client_msg_id,
        text=text,
        media_ids=tuple(media_ids),
        ref=ref,
        reply_to=reply_to,
    )


def _decode_receipt(fields: _Fields, ref: str | None) -> ReceiptFrame:
    channel_id = _id(fields, "channel_id")
    seq = _seq(fields, "seq")
    state = _required(fields, "state")
    if type(state) is not str or state not in RECEIPT_STATES:
        raise _FieldError('state must be "delivered" or "read"')
    return ReceiptFrame(channel_id=channel_id, seq=seq, state=state, ref=ref)


def _decode_typing(fields: _Fields, ref: str | None) -> TypingFrame:
    return TypingFrame(channel_id=_id(fields, "channel_id"), ref=ref)


def _decode_presence_subscribe(fields: _Fields, ref: str | None) -> PresenceSubscribeFrame:
    user_ids = _id_list(fields, "user_ids", MAX_PRESENCE_USER_IDS, required=True)
    # A watch list is a set: drop repeats, keep the client's order.
    return PresenceSubscribeFrame(user_ids=tuple(dict.fromkeys(user_ids)), ref=ref)


def _decode_ping(fields: _Fields, ref: str | None) -> PingFrame:
    t = fields.get("t")
    if t is None:
        return PingFrame(t=None, ref=ref)
    kind = type(t)
    if kind is int:
        assert isinstance(t, int)
        if PING_T_INT_MIN <= t <= PING_T_INT_MAX:
            return PingFrame(t=t, ref=ref)
    elif kind is float:
        assert isinstance(t, float)
        if math.isfinite(t):
            return PingFrame(t=t, ref=ref)
    elif kind is str:
        assert isinstance(t, str)
        if len(t) <= MAX_PING_T_CHARS and _is_storable(t):
            return PingFrame(t=t, ref=ref)
    raise _FieldError(
        f"t must be a number (64-bit integer or finite float) or a string of at most"
        f" {MAX_PING_T_CHARS} characters"
    )


_DECODERS: Final[Mapping[str, Callable[[_Fields, str | None], ClientFrame]]] = {
    SyncFrame.TYPE: _decode_sync,
    SendFrame.TYPE: _decode_send,
    ReceiptFrame.TYPE: _decode_receipt,
    TypingFrame.TYPE: _decode_typing,
    PresenceSubscribeFrame.TYPE: _decode_presence_subscribe,
    PingFrame.TYPE: _decode_ping,
}


def _describe_type(value: str) -> str:
    """A short, safe rendering of an unknown type name for the error message."""
    if len(value) <= 32 and value.isascii() and value.isprintable():
        return f" {value!r}"
    return ""


def decode_client_frame(data: str | bytes | bytearray | memoryview, fmt: WireFormat) -> ClientFrame:
    """Decode one client WebSocket message into a typed frame.

    ``data`` is the message as received: ``str`` for a text message, ``bytes``
    (or another bytes-like object) for a binary one. Raises :class:`FrameError` (and nothing else):

    - ``bad_frame``: wrong message kind for ``fmt``, not parseable, not an
      object/map, ``type`` missing or not a string;
    - ``unknown_type``: a ``type`` string we do not know;
    - ``invalid``: ``ref`` or a field missing, null when required, of the
      wrong type or out of range; the message names the field.

    ``ref`` is read first, so every error about a frame whose ``ref`` is a
    valid string carries it. Unknown extra keys are ignored; ``null`` for an
    optional field means absent.
    """
    obj = _parse(data, fmt)
    if type(obj) is not dict:
        raise FrameError("bad_frame", "a frame must be an object (a map)")
    fields: _Fields = obj
    raw_ref = fields.get("ref")
    ref = _ref(raw_ref)

    frame_type = fields.get("type")
    if frame_type is None:
        raise FrameError("bad_frame", "frame has no type", ref)
    if type(frame_type) is not str:
        raise FrameError("bad_frame", "type must be a string", ref)
    decoder = _DECODERS.get(frame_type)
    if decoder is None:
        raise FrameError("unknown_type", f"unknown frame type{_describe_type(frame_type)}", ref)

    if raw_ref is not None and ref is None:
        raise FrameError("invalid", f"ref must be a string of at most {MAX_REF_CHARS} characters")
    try:
        return decoder(fields, ref)
    except _FieldError as exc:
        raise FrameError("invalid", exc.message, ref) from None


# -- encoding -------------------------------------------------------------------

# Built once: json.dumps(...) with options builds a new encoder per call.
# allow_nan=False: a NaN in a server frame is a bug, never valid JSON on the wire.
_JSON_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    allow_nan=False,
    check_circular=False,
)


def encode(obj: Mapping[str, object], fmt: WireFormat) -> str | bytes:
    """Encode one server frame as one WebSocket message.

    JSON: compact separators, ``ensure_ascii=False``; returns ``str`` (send it
    as a text message). msgpack: returns ``bytes`` (send as a binary message).
    Encode once per frame and send the result to every recipient that uses
    that format. Values are JSON-like (dict, list/tuple, str, int, float,
    bool, None); anything else raises ``TypeError``. A NaN or infinity raises
    ``ValueError`` in JSON; an int outside -2**63..2**64-1 ``OverflowError`` in
    msgpack. Those are server bugs: the decoder never lets such values in.
    """
    if type(obj) is not dict:
        obj = dict(obj)
    if fmt is WireFormat.JSON:
        return _JSON_ENCODER.encode(obj)
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


# -- server frames ----------------------------------------------------------------


def encode_frame(frame: ServerFrame, fmt: WireFormat) -> str | bytes:
    """One typed server frame (chatd.wire.outbound) as one WebSocket message."""
    return encode(frame.to_dict(), fmt)


#: Encoded bodies of shared events, oldest first: a message to a group is one
#: ``fields`` dict shared by every member's event, encoded once per format.
#: Each entry holds its dict, so the ``id`` in its key cannot be reused while
#: the entry lives. Bounded: an evicted body is simply encoded again.
_SHARED_BODIES: dict[tuple[int, WireFormat], tuple[object, str | bytes]] = {}
_SHARED_BODIES_MAX = 2048
_MSGPACK_EVENT_KEYS = (
    msgpack.packb("type") + msgpack.packb("event") + msgpack.packb("inbox_seq"),
    msgpack.packb("kind"),
)


def encode_event(event: InboxEvent, fmt: WireFormat) -> str | bytes:
    """``{"type": "event", "inbox_seq", "kind", ...fields}`` as one WebSocket message.

    The fields are encoded once and the frame's own keys written around them,
    so a shared body (``event.shared``) costs one encoding per format for all
    of its recipients, whatever their number; the result is byte for byte what
    :func:`encode` gives for the whole frame.
    """
    body = _encoded_body(event, fmt)
    if fmt is WireFormat.JSON:
        assert isinstance(body, str)
        head = f'{{"type":"event","inbox_seq":{event.inbox_seq},"kind":{_JSON_ENCODER.encode(event.kind)}'
        return head + ("," + body if body != "}" else "}")
    assert isinstance(body, bytes)
    frame: bytes = (
        _msgpack_map_header(3 + len(event.fields))
        + _MSGPACK_EVENT_KEYS[0]
        + msgpack.packb(event.inbox_seq)
        + _MSGPACK_EVENT_KEYS[1]
        + msgpack.packb(event.kind)
        + body
    )
    return frame


def _encoded_body(event: InboxEvent, fmt: WireFormat) -> str | bytes:
    """The fields without their container's opening: JSON after ``{``, msgpack after the map header."""
    key = (id(event.fields), fmt)
    if event.shared:
        hit = _SHARED_BODIES.get(key)
        if hit is not None and hit[0] is event.fields:
            return hit[1]
    whole = encode(event.fields, fmt)
    body: str | bytes = whole[1:] if isinstance(whole, str) else whole[len(_msgpack_map_header(len(event.fields))):]
    if event.shared:
        if len(_SHARED_BODIES) >= _SHARED_BODIES_MAX:
            del _SHARED_BODIES[next(iter(_SHARED_BODIES))]
        _SHARED_BODIES[key] = (event.fields, body)
    return body


def _msgpack_map_header(size: int) -> bytes:
    if size <= 15:
        return bytes((0x80 | size,))
    if size <= 0xFFFF:
        return b"\xde" + size.to_bytes(2, "big")
    return b"\xdf" + size.to_bytes(4, "big")

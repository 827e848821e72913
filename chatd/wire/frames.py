"""Typed client frames (PROTOCOL.md section 3, "Client to server").

Each client frame type is one frozen, slotted attrs class. Frames are built
from wire data only by :func:`chatd.wire.codec.decode_client_frame`, which
validates every field and reports problems as a ``FrameError``; the attrs
validators here only guard the invariants for code that builds frames
directly (tests, clients), and raise ``ValueError``/``TypeError``.

``to_dict()`` gives the wire mapping of a frame (what a client sends), for
test clients and round-trip tests: optional fields that are absent (``None``,
empty ``media_ids``) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Final, TypeAlias

import attrs

from chatd.limits import ID_MAX, MAX_CLIENT_MSG_ID_CHARS

__all__ = [
    "ClientFrame",
    "ID_MAX",
    "MAX_CLIENT_MSG_ID_CHARS",
    "MAX_MEDIA_IDS",
    "MAX_PING_T_CHARS",
    "MAX_PRESENCE_USER_IDS",
    "MAX_REF_CHARS",
    "PING_T_INT_MAX",
    "PING_T_INT_MIN",
    "PingFrame",
    "PresenceSubscribeFrame",
    "RECEIPT_STATES",
    "ReceiptFrame",
    "SendFrame",
    "SyncFrame",
    "TypingFrame",
]

MAX_REF_CHARS: Final = 64
MAX_MEDIA_IDS: Final = 10
MAX_PRESENCE_USER_IDS: Final = 500
MAX_PING_T_CHARS: Final = 64
#: ``ping.t`` integers must be representable in both wire formats (msgpack
#: encodes -2**63 .. 2**64-1), since the server echoes them in ``pong``.
PING_T_INT_MIN: Final = -(2**63)
PING_T_INT_MAX: Final = 2**64 - 1
RECEIPT_STATES: Final = frozenset({"delivered", "read"})


_TupleValidator: TypeAlias = Callable[[object, "attrs.Attribute[tuple[int, ...]]", tuple[int, ...]], None]


# -- invariant guards (not parsing: the codec validates wire data first) -----


def _is_int(value: object) -> bool:
    # bool is a subclass of int but never a number on our wire.
    return type(value) is int


def _check_id(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (_is_int(value) and 1 <= value <= ID_MAX):
        raise ValueError(f"{attribute.name} must be an int in 1..{ID_MAX}")


def _check_seq(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (_is_int(value) and 0 <= value <= ID_MAX):
        raise ValueError(f"{attribute.name} must be an int in 0..{ID_MAX}")


def _check_ref(_inst: object, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not (type(value) is str and len(value) <= MAX_REF_CHARS):
        raise ValueError(f"ref must be None or a str of at most {MAX_REF_CHARS} chars")


def _check_id_tuple(max_len: int) -> _TupleValidator:
    def check(_inst: object, attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
        if type(value) is not tuple or len(value) > max_len:
            raise ValueError(f"{attribute.name} must be a tuple of at most {max_len} ids")
        for item in value:
            if not (_is_int(item) and 1 <= item <= ID_MAX):
                raise ValueError(f"{attribute.name} must hold ints in 1..{ID_MAX}")

    return check


# -- frames -------------------------------------------------------------------


@attrs.frozen
class SyncFrame:
    """``{"type": "sync", "after": cursor}``: replay the inbox after ``after``."""

    TYPE: ClassVar[str] = "sync"

    after: int = attrs.field(validator=_check_seq)
    ref: str | None = attrs.field(default=None, validator=_check_ref)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"type": self.TYPE, "after": self.after}
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@attrs.frozen
class SendFrame:
    """``{"type": "send", "channel_id", "client_msg_id", "text", "media_ids"?, "reply_to"?}``.

    ``text`` is only checked for type and storability here (no NUL, no lone
    surrogate); its length limit belongs to the send service.
    """

    TYPE: ClassVar[str] = "send"

    channel_id: int = attrs.field(validator=_check_id)
    client_msg_id: str = attrs.field()
    text: str = attrs.field(validator=attrs.validators.instance_of(str))
    media_ids: tuple[int, ...] = attrs.field(default=(), validator=_check_id_tuple(MAX_MEDIA_IDS))
    ref: str | None = attrs.field(default=None, validator=_check_ref)
    #: The seq this message answers (PROTOCOL §10), in the same channel.
    reply_to: int | None = attrs.field(default=None)

    @reply_to.validator
    def _check_reply_to(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None:
            _check_id(self, attribute, value)  # type: ignore[arg-type]

    @client_msg_id.validator
    def _check_client_msg_id(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if not (type(value) is str and 1 <= len(value) <= MAX_CLIENT_MSG_ID_CHARS):
            raise ValueError(f"client_msg_id must be a str of 1..{MAX_CLIENT_MSG_ID_CHARS} chars")

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "type": self.TYPE,
            "channel_id": self.channel_id,
            "client_msg_id": self.client_msg_id,
            "text": self.text,
        }
        if self.media_ids:
            d["media_ids"] = list(self.media_ids)
        if self.reply_to is not None:
            d["reply_to"] = self.reply_to
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@attrs.frozen
class ReceiptFrame:
    """``{"type": "receipt", "channel_id", "seq", "state": "delivered"|"read"}``."""

    TYPE: ClassVar[str] = "receipt"

    channel_id: int = attrs.field(validator=_check_id)
    seq: int = attrs.field(validator=_check_seq)
    state: str = attrs.field(validator=attrs.validators.in_(RECEIPT_STATES))
    ref: str | None = attrs.field(default=None, validator=_check_ref)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "type": self.TYPE,
            "channel_id": self.channel_id,
            "seq": self.seq,
            "state": self.state,
        }
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@attrs.frozen
class TypingFrame:
    """``{"type": "typing", "channel_id"}``."""

    TYPE: ClassVar[str] = "typing"

    channel_id: int = attrs.field(validator=_check_id)
    ref: str | None = attrs.field(default=None, validator=_check_ref)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"type": self.TYPE, "channel_id": self.channel_id}
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@attrs.frozen
class PresenceSubscribeFrame:
    """``{"type": "presence_subscribe", "user_ids": [...]}``: the new watch list.

    The decoder drops repeated ids (keeping the first occurrence's order), so
    each id gets exactly one ``presence`` answer.
    """

    TYPE: ClassVar[str] = "presence_subscribe"

    user_ids: tuple[int, ...] = attrs.field(validator=_check_id_tuple(MAX_PRESENCE_USER_IDS))
    ref: str | None = attrs.field(default=None, validator=_check_ref)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"type": self.TYPE, "user_ids": list(self.user_ids)}
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@attrs.frozen
class PingFrame:
    """``{"type": "ping", "t"?}``; ``t`` is echoed in ``pong``.

    ``t`` is an int in PING_T_INT_MIN..PING_T_INT_MAX, a finite float, a str of
    at most MAX_PING_T_CHARS chars, or None (absent).
    """

    TYPE: ClassVar[str] = "ping"

    t: int | float | str | None = attrs.field(default=None)
    ref: str | None = attrs.field(default=None, validator=_check_ref)

    @t.validator
    def _check_t(self, _attribute: attrs.Attribute[int | float | str | None], value: object) -> None:
        if value is None:
            return
        kind = type(value)
        if kind is int:
            assert isinstance(value, int)
            ok = PING_T_INT_MIN <= value <= PING_T_INT_MAX
        elif kind is float:
            assert isinstance(value, float)
            ok = math.isfinite(value)
        elif kind is str:
            assert isinstance(value, str)
            ok = len(value) <= MAX_PING_T_CHARS
        else:
            ok = False
        if not ok:
            raise ValueError("t must be None, an int, a finite float or a short str")

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"type": self.TYPE}
        if self.t is not None:
            d["t"] = self.t
        if self.ref is not None:
            d["ref"] = self.ref
        return d


ClientFrame: TypeAlias = SyncFrame | SendFrame | ReceiptFrame | TypingFrame | PresenceSubscribeFrame | PingFrame

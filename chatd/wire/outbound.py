"""Server-to-client frames as typed values (PROTOCOL.md §3, "Server to client").

The session builds these; :func:`chatd.wire.codec.encode_frame` and
:func:`~chatd.wire.codec.encode_event` are the one place that turns them into
bytes for each wire format. Each ``to_dict`` gives the frame's fields in the
contract's names, ``ref`` only when the client sent one.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

from chatd.models import Ack, Message, PresenceState


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


@attrs.frozen
class Welcome:
    user_id: int
    device_id: int
    node: str
    heartbeat_s: float
    inbox_head: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "welcome",
            "user_id": self.user_id,
            "device_id": self.device_id,
            "node": self.node,
            "heartbeat_s": self.heartbeat_s,
            "inbox_head": self.inbox_head,
        }


@attrs.frozen
class Synced:
    cursor: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "synced", "cursor": self.cursor}


@attrs.frozen
class AckFrame:
    ack: Ack
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _with_ref({"type": "ack", **self.ack.to_json()}, self.ref)


@attrs.frozen
class ErrorFrame:
    """``error``; ``retry_after_ms`` (chatd's addition) only on ``rate_limited``."""

    code: str
    message: str
    ref: str | None = None
    retry_after_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            frame["retry_after_ms"] = self.retry_after_ms
        return _with_ref(frame, self.ref)


@attrs.frozen
class Pong:
    t: object = None
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "pong"}
        if self.t is not None:
            frame["t"] = self.t
        return _with_ref(frame, self.ref)


@attrs.frozen
class Reconnect:
    after_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "reconnect", "after_ms": self.after_ms}


@attrs.frozen
class LiveMessage:
    """A large channel's message, live and not persisted (PROTOCOL.md §4)."""

    message: Message

    def to_dict(self) -> dict[str, Any]:
        return {"type": "message", **self.message.to_json()}


@attrs.frozen
class ReceiptUpdate:
    """A large channel's watermark moved: live, not persisted (PROTOCOL §3, §5)."""

    channel_id: int
    user_id: int
    state: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "receipt_update", "channel_id": self.channel_id, "user_id": self.user_id,
                "state": self.state, "seq": self.seq}


@attrs.frozen
class TypingNotice:
    """``{"type": "typing", "channel_id", "user_id"}``: live only."""

    channel_id: int
    user_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "typing", "channel_id": self.channel_id, "user_id": self.user_id}


@attrs.frozen
class PresenceFrame:
    """``{"type": "presence", "user_id", "status", "last_seen"}`` (PROTOCOL §6)."""

    state: PresenceState

    def to_dict(self) -> dict[str, Any]:
        return {"type": "presence", **self.state.to_json()}


ServerFrame: TypeAlias = (
    Welcome | Synced | AckFrame | ErrorFrame | Pong | Reconnect | LiveMessage | ReceiptUpdate | TypingNotice
    | PresenceFrame
)

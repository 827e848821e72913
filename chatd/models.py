"""Value classes that cross layers (store -> services -> sessions/HTTP).

Frozen and slotted; built by the store from its records through named
constructors, never ``Cls(**row)``. Each knows how to render itself as the
contract's JSON object, so there is one rendering of a message or a channel.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import attrs


def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds, as the contract wants: 2026-11-23T10:00:00.123Z."""
    if moment is None:
        return None
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@attrs.frozen
class User:
    user_id: int
    username: str
    display_name: str
    is_admin: bool
    disabled: bool

    def to_public(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "username": self.username, "display_name": self.display_name}


@attrs.frozen
class Credentials:
    """A user with its password hash (None: no password set), for login only."""

    user: User
    password_hash: str | None


@attrs.frozen
class Principal:
    """Who is calling: the user and the device (token) it authenticated as.

    ``inbox_head`` is the user's newest inbox_seq when the token was checked,
    read by the same query, so a WebSocket's ``welcome`` costs no second one.
    """

    user_id: int
    device_id: int
    is_admin: bool
    inbox_head: int = 0


@attrs.frozen
class Channel:
    channel_id: int
    kind: str
    name: str | None
    member_count: int
    last_seq: int
    read_seq: int
    members: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channel_id": self.channel_id,
            "kind": self.kind,
            "name": self.name,
            "member_count": self.member_count,
            "last_seq": self.last_seq,
            "read_seq": self.read_seq,
            "unread": max(0, self.last_seq - self.read_seq),
        }
        if self.members is not None:
            out["members"] = list(self.members)
        return out


@attrs.frozen
class ChannelFacts:
    """A channel's row as a change sees it, locked: what the services' rules decide on."""

    channel_id: int
    kind: str
    created_by: int | None
    member_count: int


@attrs.frozen
class ChannelSummary:
    """One line of ``chatd channel list``."""

    channel_id: int
    kind: str
    name: str | None
    member_count: int
    last_seq: int
    creator: str


@attrs.frozen
class Message:
    channel_id: int
    seq: int
    sender_id: int
    client_msg_id: str
    text: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_msg_id": self.client_msg_id,
            "text": self.text,
            "media": [],
            "created_at": format_time(self.created_at),
        }


@attrs.frozen
class Ack:
    """The answer to a send, after its commit (or the original one, for a retry)."""

    client_msg_id: str
    channel_id: int
    seq: int
    created_at: datetime
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "client_msg_id": self.client_msg_id,
            "channel_id": self.channel_id,
            "seq": self.seq,
            "created_at": format_time(self.created_at),
            "state": "sent",
            "duplicate": self.duplicate,
        }


@attrs.frozen
class InboxAdvance:
    """A user's inbox grew to ``head``: what a wake-up carries (a position, no data)."""

    user_id: int
    head: int


@attrs.frozen
class SendRequest:
    """One send, as the writer commits it."""

    sender: int
    channel_id: int
    client_msg_id: str
    text: str


@attrs.frozen
class SendOutcome:
    ack: Ack
    advances: tuple[InboxAdvance, ...]
    #: The channel has more members than ``fanout.inbox_max_members``: no inbox
    #: rows were written (``advances`` is empty); its online members get the
    #: message live and the others read it from history.
    large: bool = False


@attrs.frozen
class InboxEvent:
    """One inbox entry, ready to be rendered as an ``event`` frame."""

    inbox_seq: int
    kind: str
    fields: dict[str, Any] = attrs.field(eq=True)
    #: ``fields`` is one dict shared by every recipient's event (a message to a
    #: group): the codec encodes it once per wire format for all of them.
    shared: bool = attrs.field(default=False, eq=False, repr=False)

    def to_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "event", "inbox_seq": self.inbox_seq, "kind": self.kind}
        frame.update(self.fields)
        return frame

    def to_json(self) -> dict[str, Any]:
        """The same event as the HTTP long-poll returns it (no frame type)."""
        out: dict[str, Any] = {"inbox_seq": self.inbox_seq, "kind": self.kind}
        out.update(self.fields)
        return out


@attrs.frozen
class NodeState:
    """A node's row in the registry, for ``chatd stats``."""

    name: str
    url: str
    started_at: datetime
    heartbeat_at: datetime
    connections: int
    alive: bool


@attrs.frozen
class Heartbeat:
    """The answer to a node's heartbeat."""

    #: This node's row was still there (False: it had expired and must register again).
    known: bool
    #: The nodes this heartbeat expired.
    expired: tuple[str, ...]


@attrs.frozen
class Stats:
    """Row counts for ``chatd stats`` (printed in this order)."""

    users: int
    channels: int
    messages: int
    inbox_events: int


@attrs.frozen
class ReceiptRequest:
    """One receipt, as the receipt writer commits it: ``user_id`` has delivered/read up to ``seq``."""

    user_id: int
    channel_id: int
    state: str
    seq: int


@attrs.frozen
class ReceiptChange:
    """A committed watermark move (PROTOCOL §5): the new ``seq`` of ``state``.

    ``large``: the channel has more members than ``receipts.fanout_max_members``,
    so no inbox events were written and the change goes out as a live
    ``receipt_update``; otherwise ``advances`` are the members' new inbox heads.
    """

    channel_id: int
    user_id: int
    state: str
    seq: int
    large: bool
    advances: tuple[InboxAdvance, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "user_id": self.user_id, "state": self.state, "seq": self.seq}


@attrs.frozen
class Watermarks:
    user_id: int
    delivered_seq: int
    read_seq: int

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "delivered_seq": self.delivered_seq, "read_seq": self.read_seq}


@attrs.frozen
class ReceiptCounts:
    """``GET /v1/channels/{id}/receipts?seq=N``: members that delivered/read at least ``seq``."""

    seq: int
    delivered: int
    read: int
    members: tuple[Watermarks, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "delivered": self.delivered,
            "read": self.read,
            "members": [m.to_json() for m in self.members],
        }


@attrs.frozen
class PresenceState:
    """``{"user_id", "status", "last_seen"}`` (PROTOCOL §6)."""

    user_id: int
    online: bool
    last_seen: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "status": "online" if self.online else "offline",
            "last_seen": format_time(self.last_seen),
        }

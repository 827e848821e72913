"""The inbox events a channel or message change writes, and their data (PROTOCOL §5, §10).

The store appends what these render, in the change's transaction; a client
reads it back as the fields of an ``event`` frame of kind ``channel`` or
``member``. One class per event, so its shape is written down once.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs


@attrs.frozen
class ChannelChanged:
    """Kind ``channel``: a channel was created (its members learn of it) or renamed."""

    channel_id: int
    change: Literal["created", "renamed"]
    name: str | None

    def to_data(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "change": self.change, "name": self.name}


@attrs.frozen
class MemberChanged:
    """Kind ``member``: ``user_id`` was added to or removed from the channel ``by`` someone."""

    channel_id: int
    user_id: int
    change: Literal["added", "removed"]
    by: int

    def to_data(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "user_id": self.user_id, "change": self.change, "by": self.by}


# --- changes to a message (PROTOCOL §10) ---------------------------------------------
#
# An ``edit`` event is stored without its text (only which message): it is
# rendered from the message's current state when read (``Message.edit_json``),
# so a deletion that erases the text erases it from every edit event as well.


@attrs.frozen
class MessageEdited:
    """Kind ``edit`` as stored: which message (the rest is read with it)."""

    channel_id: int
    seq: int

    def to_data(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "seq": self.seq}


@attrs.frozen
class MessageDeleted:
    """Kind ``delete``: message ``seq`` was deleted ``by`` its sender, the channel's creator or an admin."""

    channel_id: int
    seq: int
    by: int

    def to_data(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "seq": self.seq, "by": self.by}


@attrs.frozen
class ReactionChanged:
    """Kind ``reaction``: ``user_id`` added or removed ``emoji`` on message ``seq``."""

    channel_id: int
    seq: int
    user_id: int
    emoji: str
    change: Literal["added", "removed"]

    def to_data(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "seq": self.seq,
            "user_id": self.user_id,
            "emoji": self.emoji,
            "change": self.change,
        }

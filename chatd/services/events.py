"""The inbox events a channel change writes, and their data (PROTOCOL §5).

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

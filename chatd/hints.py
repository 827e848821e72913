"""The hints nodes send each other through PostgreSQL ``NOTIFY``: one class per kind.

Every hint travels on the channel :data:`CHANNEL` as a short text payload
(PostgreSQL's limit is 8000 bytes). A hint is never data: it says where to
look, and the reader re-reads the database (Synapse's replication commands are
the model: each kind a class, its format in its docstring, one parse function).

Some hints are written by SQL functions in ``migrations/`` (inbox heads,
channel messages), others by Python (:func:`encode`, revocations); both sides
follow the formats below, and the tests check every kind round-trips.

A node parses each payload once (:func:`parse`) and dispatches on the type.
An unreadable payload parses as :class:`WakeAll`: a hint lost costs latency,
never an event, so the safe reading of garbage is "everyone re-reads".
"""

from __future__ import annotations

import logging
from typing import TypeAlias

import attrs

from chatd.models import InboxAdvance

log = logging.getLogger(__name__)

#: The one LISTEN/NOTIFY channel of a chatd cluster.
CHANNEL = "chatd_inbox"
#: Prefix of hints sent by a group-commit batch (see :class:`InboxHeads`).
BATCH_PREFIX = "w:"


@attrs.frozen
class InboxHeads:
    """``uid:head,uid:head,...``: these users' inboxes grew to these heads.

    With the prefix ``w:`` it comes from a group-commit batch, whose own node
    already delivered the events from memory and skips the hint
    (``from_batch``). Written by the SQL function ``chatd_notify_inbox``.
    """

    advances: tuple[InboxAdvance, ...]
    from_batch: bool = False


@attrs.frozen
class WakeAll:
    """``*`` (or ``w:*``): too many users for one payload; every watcher re-reads."""

    from_batch: bool = False


@attrs.frozen
class ChannelMessage:
    """``c:<channel_id>:<seq>`` (or ``w:c:...``): a large channel's message was
    committed; nodes push it live to their connected members. Written by the SQL
    function ``chatd_notify_channel``."""

    channel_id: int
    seq: int
    from_batch: bool = False


@attrs.frozen
class DeviceRevoked:
    """``d:<device_id>``: the device logged out; every node closes its connections (4001)."""

    device_id: int


@attrs.frozen
class UserRevoked:
    """``u:<user_id>``: the user was disabled or changed password; every node closes
    all of its connections (4001)."""

    user_id: int


@attrs.frozen
class Live:
    """``e:<node>|<item>;<item>;...``: live, unpersisted news gathered by one node
    and published together (at most every few tens of milliseconds, never one
    NOTIFY per frame). Items:

    - ``t<channel>,<user>``: the user is typing in the channel;
    - ``p<user>,<1|0>,<last_seen_ms>``: the user went online (1) or offline (0)
      on that node, its last frame at that Unix time in milliseconds;
    - ``r<channel>,<user>,<d|r>,<seq>``: a large channel's receipt watermark moved.

    Written by Python (:func:`encode_live`, chatd.services.livebus).
    """

    node: str
    typing: tuple[tuple[int, int], ...] = ()
    presence: tuple[tuple[int, bool, int], ...] = ()
    receipts: tuple[tuple[int, int, str, int], ...] = ()


Hint: TypeAlias = InboxHeads | WakeAll | ChannelMessage | DeviceRevoked | UserRevoked | Live

#: Prefix of :class:`Live` hints.
LIVE_PREFIX = "e:"
#: Most characters of one NOTIFY payload chatd writes (PostgreSQL's limit is 8000 bytes).
MAX_PAYLOAD = 7000


def parse(payload: str) -> Hint:
    """The hint a payload carries; garbage is :class:`WakeAll` (logged)."""
    if payload.startswith(LIVE_PREFIX):
        return _parse_live(payload[len(LIVE_PREFIX):])
    from_batch = payload.startswith(BATCH_PREFIX)
    body = payload[len(BATCH_PREFIX):] if from_batch else payload
    try:
        if body == "*":
            return WakeAll(from_batch)
        kind, _, rest = body.partition(":")
        if kind == "d":
            return DeviceRevoked(_number(rest))
        if kind == "u":
            return UserRevoked(_number(rest))
        if kind == "c":
            channel, _, seq = rest.partition(":")
            return ChannelMessage(_number(channel), _number(seq), from_batch)
        pairs = (item.split(":") for item in body.split(","))
        advances = tuple(InboxAdvance(_number(u), _number(h)) for u, h in pairs)
        if not advances:
            raise ValueError("no users")
        return InboxHeads(advances, from_batch)
    except ValueError:
        log.warning("unreadable cluster hint %.80r; waking everyone", payload)
        return WakeAll()


def encode(hint: DeviceRevoked | UserRevoked) -> str:
    """The payload of a hint that Python sends (the others come from SQL)."""
    if isinstance(hint, DeviceRevoked):
        return f"d:{hint.device_id}"
    return f"u:{hint.user_id}"


def _number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _parse_live(body: str) -> Live | WakeAll:
    node, _, items = body.rpartition("|")
    typing: list[tuple[int, int]] = []
    presence: list[tuple[int, bool, int]] = []
    receipts: list[tuple[int, int, str, int]] = []
    try:
        for item in items.split(";"):
            kind, fields = item[:1], item[1:].split(",")
            if kind == "t" and len(fields) == 2:
                typing.append((_number(fields[0]), _number(fields[1])))
            elif kind == "p" and len(fields) == 3 and fields[1] in ("0", "1"):
                presence.append((_number(fields[0]), fields[1] == "1", _number(fields[2])))
            elif kind == "r" and len(fields) == 4 and fields[2] in ("d", "r"):
                state = "read" if fields[2] == "r" else "delivered"
                receipts.append((_number(fields[0]), _number(fields[1]), state, _number(fields[3])))
            else:
                raise ValueError(item)
    except ValueError:
        # Live news lost costs nothing durable: no one needs to re-read.
        log.warning("unreadable live hint %.80r; dropped", body)
        return Live(node)
    return Live(node, tuple(typing), tuple(presence), tuple(receipts))


def encode_live(hint: Live) -> list[str]:
    """The payloads of a live hint: as many as needed to keep each under MAX_PAYLOAD."""
    items = [f"t{c},{u}" for c, u in hint.typing]
    items += [f"p{u},{int(on)},{ms}" for u, on, ms in hint.presence]
    items += [f"r{c},{u},{state[0]},{seq}" for c, u, state, seq in hint.receipts]
    head = f"{LIVE_PREFIX}{hint.node}|"
    payloads: list[str] = []
    current: list[str] = []
    size = len(head)
    for item in items:
        if current and size + len(item) + 1 > MAX_PAYLOAD:
            payloads.append(head + ";".join(current))
            current, size = [], len(head)
        current.append(item)
        size += len(item) + 1
    if current:
        payloads.append(head + ";".join(current))
    return payloads

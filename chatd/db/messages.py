"""Messages: committing sends (one or a batch), reading history and single messages.

A send is one call of the SQL function ``chatd_send`` (a batch one of
``chatd_send_batch``): the message, its seq and its recipients' inbox rows
commit in one round trip. Channels with more members than ``inbox_max``
get no inbox rows (the outcome says ``large``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from chatd.db import media, push, records
from chatd.db.bridge import Connection, Database
from chatd.db.records import IS_MEMBER, MESSAGE_COLUMNS
from chatd.errors import ChatdError, NotMember
from chatd.models import Ack, Message, SendOutcome, SendRequest

_SEND = "SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs FROM chatd_send($1, $2, $3, $4, $5)"
_SEND_BATCH = """
SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs
FROM chatd_send_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5)
"""
_HISTORY_BEFORE = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE channel_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3
"""
_HISTORY_AFTER = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE channel_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3
"""
_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = $1 AND seq = $2"


class BatchFailed(Exception):
    """A batch of sends could not commit for a reason of the database's (a race
    on a client_msg_id between nodes, a serialization failure...): nothing of it
    was stored, and each send may be retried on its own."""


def _outcome(record: Any, client_msg_id: str) -> SendOutcome | ChatdError:
    if record["status"] == "not_member":
        return NotMember("not a member of this channel")
    ack = Ack(
        client_msg_id=client_msg_id,
        channel_id=record["channel_id"],
        seq=record["seq"],
        created_at=record["created_at"],
        duplicate=record["status"] == "duplicate",
    )
    # chatd_send's contract: a message sent with no recipients' inbox rows is a large channel's.
    large = record["status"] == "sent" and not record["user_ids"]
    return SendOutcome(ack, records.advances(record["user_ids"], record["inbox_seqs"]), large=large)


async def _after_send(conn: Connection, found: Sequence[Any], requests: Sequence[SendRequest]) -> int:
    """In the send's transaction, for each message newly sent: its media, and the pushes to
    its recipients who are offline (``chatd_send_batch`` itself is left as it is).
    Returns the number of pushes queued."""
    sent = [(rec, req) for rec, req in zip(found, requests) if rec["status"] == "sent"]
    await media.attach(conn, [(rec["channel_id"], rec["seq"], req.media) for rec, req in sent if req.media])
    return await push.enqueue(conn, [
        push.Recipient(user_id, rec["channel_id"], rec["seq"])
        for rec, req in sent for user_id in rec["user_ids"] or () if user_id != req.sender
    ])


class MessageStore:
    """The ``messages`` table: one method per unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: Called (in Trio) after a commit that queued pushes: the composition root wakes the push worker.
        self.on_push_queued: Callable[[], None] | None = None

    def _pushed(self, count: int) -> None:
        if count and self.on_push_queued is not None:
            self.on_push_queued()

    async def send(self, request: SendRequest, inbox_max_members: int) -> SendOutcome:
        """Commit one message with its seq and inbox entries (and its media and pushes) in one transaction."""

        async def unit(conn: Connection) -> tuple[Any, int]:
            record = await conn.fetchrow(
                _SEND, request.sender, request.channel_id, request.client_msg_id, request.text, inbox_max_members
            )
            return record, await _after_send(conn, [record], [request])

        record, pushed = await self.db.transaction(unit)
        self._pushed(pushed)
        outcome = _outcome(record, request.client_msg_id)
        if isinstance(outcome, ChatdError):
            raise outcome
        return outcome

    async def send_batch(
        self, requests: Sequence[SendRequest], inbox_max_members: int
    ) -> list[SendOutcome | ChatdError]:
        """Commit many sends in one transaction; one answer per request, in order.

        A non-member is an answer (NotMember), not a failure. Raises Unavailable
        when the database cannot be reached, BatchFailed when it refused the
        batch as a whole (nothing stored; each send may be retried alone).
        """

        async def unit(conn: Connection) -> tuple[list[Any], int]:
            found = list(
                await conn.fetch(
                    _SEND_BATCH,
                    [r.sender for r in requests],
                    [r.channel_id for r in requests],
                    [r.client_msg_id for r in requests],
                    [r.text for r in requests],
                    inbox_max_members,
                )
            )
            return found, await _after_send(conn, found, requests)

        try:
            found, pushed = await self.db.transaction(unit)
        except asyncpg.PostgresError as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        self._pushed(pushed)
        return [_outcome(rec, req.client_msg_id) for rec, req in zip(found, requests)]

    async def history(
        self, channel_id: int, user_id: int, *, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        """A member's page of the channel: after ``after`` oldest first, else before ``before`` newest first."""

        async def unit(conn: Connection) -> list[Message]:
            if await conn.fetchval(IS_MEMBER, channel_id, user_id) is None:
                raise NotMember("not a member of this channel")
            if after is not None:
                return await _with_media(conn, await conn.fetch(_HISTORY_AFTER, channel_id, after, limit))
            bound = before if before is not None else 2**63 - 1
            return await _with_media(conn, await conn.fetch(_HISTORY_BEFORE, channel_id, bound, limit))

        return await self.db.read(unit)

    async def get(self, channel_id: int, seq: int) -> Message | None:
        async def unit(conn: Connection) -> list[Message]:
            return await _with_media(conn, await conn.fetch(_MESSAGE, channel_id, seq))

        found = await self.db.read(unit)
        return found[0] if found else None


async def _with_media(conn: Connection, found: Sequence[Any]) -> list[Message]:
    """Messages from their rows, with their media (one more statement when any were found)."""
    messages = [records.message(r) for r in found]
    if not messages:
        return []
    attached = await media.message_media(conn, [(m.channel_id, m.seq) for m in messages])
    return [records.with_media(m, attached) for m in messages]

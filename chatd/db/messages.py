"""Messages: committing sends (one or a batch), reading history and single messages.

A send is one call of the SQL function ``chatd_send`` (a batch one of
``chatd_send_batch``): the message, its seq and its recipients' inbox rows
commit in one round trip. Channels with more members than ``inbox_max``
get no inbox rows (the outcome says ``large``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from chatd.db import records
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


class MessageStore:
    """The ``messages`` table: one method per unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def send(self, request: SendRequest, inbox_max_members: int) -> SendOutcome:
        """Commit one message with its seq and inbox entries, in one round trip."""

        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(
                _SEND, request.sender, request.channel_id, request.client_msg_id, request.text, inbox_max_members
            )

        outcome = _outcome(await self.db.transaction(unit), request.client_msg_id)
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

        async def unit(conn: Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    _SEND_BATCH,
                    [r.sender for r in requests],
                    [r.channel_id for r in requests],
                    [r.client_msg_id for r in requests],
                    [r.text for r in requests],
                    inbox_max_members,
                )
            )

        try:
            found = await self.db.transaction(unit)
        except asyncpg.PostgresError as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        return [_outcome(rec, req.client_msg_id) for rec, req in zip(found, requests)]

    async def history(
        self, channel_id: int, user_id: int, *, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        """A member's page of the channel: after ``after`` oldest first, else before ``before`` newest first."""

        async def unit(conn: Connection) -> list[Any]:
            if await conn.fetchval(IS_MEMBER, channel_id, user_id) is None:
                raise NotMember("not a member of this channel")
            if after is not None:
                return list(await conn.fetch(_HISTORY_AFTER, channel_id, after, limit))
            bound = before if before is not None else 2**63 - 1
            return list(await conn.fetch(_HISTORY_BEFORE, channel_id, bound, limit))

        return [records.message(r) for r in await self.db.read(unit)]

    async def get(self, channel_id: int, seq: int) -> Message | None:
        async def unit(conn: Connection) -> Any:
            return await conn.fetchrow(_MESSAGE, channel_id, seq)

        record = await self.db.read(unit)
        return None if record is None else records.message(record)

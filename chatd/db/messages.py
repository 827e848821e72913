"""Messages: committing sends (one or a batch), reading history and single messages.

A send is one call of the SQL function ``chatd_send`` (a batch one of
``chatd_send_batch``): the message, its seq and its recipients' inbox rows
commit in one round trip. Channels with more members than ``inbox_max``
get no inbox rows (the outcome says ``large``).

Replies and mentions (PROTOCOL §10) are further statements of the same
transaction, around the untouched ``chatd_send_batch``: before it, each
``reply_to`` is checked and resolved to its thread's root (a seq, once
committed, exists for ever, so the check cannot go stale); after it, the sent
replies get their root and the texts with an ``@`` their mentions. Neither
locks an existing row: the send path's lock order is unchanged.

A batch of plain sends (no reply, no ``@``, no media: nearly all of them) is
instead ONE statement, the send and its push outbox rows together, which
PostgreSQL commits on its own: one round trip instead of four (BEGIN, send,
outbox, COMMIT). Each round trip is a wake-up of the database thread that
must win the GIL back from the Trio thread, which at 500 msg/s took up to
10-15 ms at p99 (benchmarks/README.md, "Issue 14, second pass").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from chatd.db import media, push, records
from chatd.db.bridge import Connection, Database
from chatd.db.message_state import with_state
from chatd.db.records import IS_MEMBER, MESSAGE_COLUMNS
from chatd.errors import ChatdError, NotFound, NotMember
from chatd.models import Ack, Message, SendOutcome, SendRequest

_SEND_BATCH = """
SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs
FROM chatd_send_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5)
"""
#: Plain sends and their pushes (every recipient but the sender, none mentioned) in one
#: statement. The function's rows are materialized once, in the batch's order (``i``).
_PLAIN_RECIPIENTS = """(
    SELECT r.user_id, b.channel_id, b.seq, false FROM sent b CROSS JOIN LATERAL unnest(b.user_ids) AS r (user_id)
    WHERE b.status = 'sent' AND r.user_id <> ($1::bigint[])[b.i])"""
_SEND_PLAIN = f"""
WITH sent AS MATERIALIZED (
    SELECT * FROM chatd_send_batch($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5)
        WITH ORDINALITY AS b (status, channel_id, seq, created_at, user_ids, inbox_seqs, i)
), pushed AS ({push.ENQUEUE_FROM.format(source=_PLAIN_RECIPIENTS)} RETURNING 1)
SELECT status, channel_id, seq, created_at, user_ids, inbox_seqs, (SELECT count(*) FROM pushed) AS pushed
FROM sent ORDER BY i
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
_THREAD = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE channel_id = $1 AND reply_to = $2 AND seq > $3 ORDER BY seq ASC LIMIT $4
"""
#: Per reply: is the sender a member, and the target's root (NULL: no such message).
_REPLY_TARGETS = """
SELECT k.i, mb.user_id IS NOT NULL AS member, coalesce(m.reply_to, m.seq) AS root
FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[]) AS k (i, sender, channel_id, seq)
LEFT JOIN members mb ON mb.channel_id = k.channel_id AND mb.user_id = k.sender
LEFT JOIN messages m ON m.channel_id = k.channel_id AND m.seq = k.seq
"""
_SET_REPLY_TO = """
UPDATE messages m SET reply_to = k.root
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS k (channel_id, seq, root)
WHERE m.channel_id = k.channel_id AND m.seq = k.seq
"""
_INSERT_MENTIONS = """
INSERT INTO mentions (channel_id, seq, user_id)
SELECT k.channel_id, k.seq, unnest(chatd_resolve_mentions(k.channel_id, k.text, $4))
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS k (channel_id, seq, text)
RETURNING channel_id, seq, user_id
"""


class BatchFailed(Exception):
    """A batch of sends could not commit for a reason of the database's (a race
    on a client_msg_id between nodes, a serialization failure...): nothing of it
    was stored, and each send may be retried on its own."""


def _outcome(
    record: Any, request: SendRequest, roots: dict[int, int], mentioned: dict[tuple[int, int], list[int]]
) -> SendOutcome | ChatdError:
    client_msg_id = request.client_msg_id
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
    sent = record["status"] == "sent"
    large = sent and not record["user_ids"]
    key = (ack.channel_id, ack.seq)
    return SendOutcome(
        ack,
        records.advances(record["user_ids"], record["inbox_seqs"]),
        large=large,
        reply_to=roots.get(id(request)) if sent else None,
        mentions=tuple(mentioned.get(key, ())) if sent else (),
    )


async def _reply_roots(conn: Connection, requests: Sequence[SendRequest]) -> tuple[dict[int, int], dict[int, NotFound]]:
    """Each reply's thread root (by ``id(request)``), and the replies refused:
    a member answering a seq that does not exist in the channel. A non-member's
    reply is left to chatd_send_batch, which answers not_member (so that a
    non-member learns nothing about the channel's seqs)."""
    replies = [(i, r) for i, r in enumerate(requests) if r.reply_to is not None]
    if not replies:
        return {}, {}
    found = await conn.fetch(
        _REPLY_TARGETS,
        [i for i, _ in replies],
        [r.sender for _, r in replies],
        [r.channel_id for _, r in replies],
        [r.reply_to for _, r in replies],
    )
    roots: dict[int, int] = {}
    refused: dict[int, NotFound] = {}
    for row in found:
        request = requests[row["i"]]
        if row["root"] is not None:
            roots[id(request)] = row["root"]
        elif row["member"]:
            refused[id(request)] = NotFound("reply_to: no such message in this channel")
    return roots, refused


async def _after_send(
    conn: Connection, sent: Sequence[tuple[SendRequest, Any]], roots: dict[int, int], inbox_max: int
) -> dict[tuple[int, int], list[int]]:
    """The sent replies' roots and the sent texts' mentions; the mentioned users per (channel, seq)."""
    replies = [(rec["channel_id"], rec["seq"], roots[id(req)]) for req, rec in sent if id(req) in roots]
    if replies:
        await conn.execute(_SET_REPLY_TO, *(list(col) for col in zip(*replies)))
    texts = [(rec["channel_id"], rec["seq"], req.text) for req, rec in sent if "@" in req.text]
    mentioned: dict[tuple[int, int], list[int]] = {}
    if texts:
        columns = [list(col) for col in zip(*texts)]
        for row in await conn.fetch(_INSERT_MENTIONS, *columns, inbox_max):
            mentioned.setdefault((row["channel_id"], row["seq"]), []).append(row["user_id"])
    return mentioned


async def _attach_and_push(
    conn: Connection, sent: Sequence[tuple[SendRequest, Any]], mentioned: dict[tuple[int, int], list[int]]
) -> int:
    """In the send's transaction, for each message newly sent: its media, and the pushes to
    its recipients who are offline, flagged when they are mentioned (``chatd_send_batch``
    itself is left as it is). Returns the number of pushes queued."""
    await media.attach(conn, [(rec["channel_id"], rec["seq"], req.media) for req, rec in sent if req.media])
    recipients: list[push.Recipient] = []
    for req, rec in sent:
        named = mentioned.get((rec["channel_id"], rec["seq"]), ())
        recipients.extend(
            push.Recipient(user_id, rec["channel_id"], rec["seq"], mention=user_id in named)
            for user_id in rec["user_ids"] or ()
            if user_id != req.sender
        )
    return await push.enqueue(conn, recipients)


def _send_columns(requests: Sequence[SendRequest]) -> tuple[list[int], list[int], list[str], list[str]]:
    """chatd_send_batch's four arrays: senders, channels, client_msg_ids, texts."""
    return (
        [r.sender for r in requests],
        [r.channel_id for r in requests],
        [r.client_msg_id for r in requests],
        [r.text for r in requests],
    )


def _is_plain(request: SendRequest) -> bool:
    """No reply to resolve, no mention to look for, no media to attach: one statement does it all."""
    return request.reply_to is None and not request.media and "@" not in request.text


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
        """Commit one message with its seq and inbox entries (and its reply root, mentions,
        media and pushes): a batch of one. Raises its ChatdError, or BatchFailed."""
        (outcome,) = await self.send_batch([request], inbox_max_members)
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

        async def plain(conn: Connection) -> tuple[list[SendOutcome | ChatdError], int]:
            found = await conn.fetch(_SEND_PLAIN, *_send_columns(requests), inbox_max_members)
            outcomes = [_outcome(rec, req, {}, {}) for req, rec in zip(requests, found)]
            return outcomes, found[0]["pushed"] if found else 0

        async def unit(conn: Connection) -> tuple[list[SendOutcome | ChatdError], int]:
            roots, refused = await _reply_roots(conn, requests)
            batch = [r for r in requests if id(r) not in refused]
            found: list[Any] = []
            if batch:
                found = list(await conn.fetch(_SEND_BATCH, *_send_columns(batch), inbox_max_members))
            sent = [(req, rec) for req, rec in zip(batch, found) if rec["status"] == "sent"]
            mentioned = await _after_send(conn, sent, roots, inbox_max_members)
            pushed = await _attach_and_push(conn, sent, mentioned)
            by_request = {id(req): _outcome(rec, req, roots, mentioned) for req, rec in zip(batch, found)}
            return [refused.get(id(r)) or by_request[id(r)] for r in requests], pushed

        try:
            if all(_is_plain(r) for r in requests):
                outcomes, pushed = await self.db.statement(plain)
            else:
                outcomes, pushed = await self.db.transaction(unit)
        except asyncpg.PostgresError as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        self._pushed(pushed)
        return outcomes

    async def history(
        self,
        channel_id: int,
        user_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        thread: int | None = None,
    ) -> list[Message]:
        """A member's page of the channel: after ``after`` oldest first, else before ``before`` newest first.

        With ``thread``: the replies to that root, oldest first, after ``after``
        (NotFound when the channel has no such message).
        """

        async def unit(conn: Connection) -> list[Message]:
            if await conn.fetchval(IS_MEMBER, channel_id, user_id) is None:
                raise NotMember("not a member of this channel")
            if thread is not None:
                if await conn.fetchrow(_MESSAGE, channel_id, thread) is None:
                    raise NotFound("thread: no such message in this channel")
                rows = await conn.fetch(_THREAD, channel_id, thread, after or 0, limit)
            elif after is not None:
                rows = await conn.fetch(_HISTORY_AFTER, channel_id, after, limit)
            else:
                bound = before if before is not None else 2**63 - 1
                rows = await conn.fetch(_HISTORY_BEFORE, channel_id, bound, limit)
            return await with_state(conn, rows, user_id)

        return await self.db.read(unit)

    async def get(self, channel_id: int, seq: int, viewer: int | None = None) -> Message | None:
        async def unit(conn: Connection) -> Message | None:
            record = await conn.fetchrow(_MESSAGE, channel_id, seq)
            return None if record is None else (await with_state(conn, [record], viewer))[0]

        return await self.db.read(unit)

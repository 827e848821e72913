"""Sending and reading messages: the checks of PROTOCOL §4, then one commit.

Commits go through the group-commit writer. The ack is built only from the committed row (or the original one, for a
retried ``client_msg_id``), so an ack always means "durably stored".
"""

from __future__ import annotations

from collections.abc import Sequence

from chatd import metrics
from chatd.db.messages import MessageStore
from chatd.errors import Invalid, RateLimited, TooLarge
from chatd.limits import MAX_CLIENT_MSG_ID_CHARS, is_client_msg_id
from chatd.models import Ack, Message, Principal, SendRequest
from chatd.services.ratelimit import RateLimiter
from chatd.services.writer import SendWriter


class MessageService:
    def __init__(
        self,
        messages: MessageStore,
        limiter: RateLimiter,
        writer: SendWriter,
        *,
        max_text_chars: int,
    ) -> None:
        self.messages = messages
        self.limiter = limiter
        self.writer = writer
        self.max_text_chars = max_text_chars

    @metrics.measured_send
    async def send(
        self, principal: Principal, channel_id: int, client_msg_id: str, text: str, media_ids: Sequence[int] = ()
    ) -> Ack:
        """Validate, rate-limit, commit, wake the recipients' sessions; then the ack.

        Raises NotMember, Invalid, TooLarge, RateLimited, or Unavailable (nothing stored).
        """
        if not is_client_msg_id(client_msg_id):
            raise Invalid(f"client_msg_id: 1..{MAX_CLIENT_MSG_ID_CHARS} characters, no NUL")
        if len(text) > self.max_text_chars:
            raise TooLarge(f"text: at most {self.max_text_chars} characters")
        if media_ids:
            # No media can be uploaded yet, so no id can be owned by the sender.
            raise Invalid("media_ids: unknown media")
        if not text.strip():
            raise Invalid("text: must not be empty")
        if "\x00" in text:
            raise Invalid("text: must not contain NUL")
        wait = self.limiter.take(principal.user_id)
        if wait:
            raise RateLimited("too many messages; slow down", wait)
        outcome = await self.writer.submit(SendRequest(principal.user_id, channel_id, client_msg_id, text))
        return outcome.ack

    async def history(
        self, principal: Principal, channel_id: int, *, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        return await self.messages.history(channel_id, principal.user_id, before=before, after=after, limit=limit)

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
from chatd.models import Ack, MediaRef, Message, Principal, SendRequest
from chatd.services.media import MediaService
from chatd.services.ratelimit import RateLimiter
from chatd.services.writer import SendWriter


def check_text(text: str, max_chars: int, *, allow_empty: bool = False) -> None:
    """The text rules of a send, which an edit follows too: TooLarge or Invalid.
    ``allow_empty``: a send that carries media may have no text."""
    if len(text) > max_chars:
        raise TooLarge(f"text: at most {max_chars} characters")
    if not text.strip() and not allow_empty:
        raise Invalid("text: must not be empty (unless the message carries media)")
    if "\x00" in text:
        raise Invalid("text: must not contain NUL")


class MessageService:
    def __init__(
        self,
        messages: MessageStore,
        limiter: RateLimiter,
        writer: SendWriter,
        *,
        max_text_chars: int,
        media: MediaService | None = None,
    ) -> None:
        self.media = media
        self.messages = messages
        self.limiter = limiter
        self.writer = writer
        self.max_text_chars = max_text_chars

    @metrics.measured_send
    async def send(
        self,
        principal: Principal,
        channel_id: int,
        client_msg_id: str,
        text: str,
        media_ids: Sequence[int] = (),
        reply_to: int | None = None,
    ) -> Ack:
        """Validate, rate-limit, commit, wake the recipients' sessions; then the ack.

        ``reply_to``: a seq of the same channel (NotFound otherwise); the reply
        attaches to that message's thread root.
        Raises NotMember, NotFound, Invalid, TooLarge, RateLimited, or Unavailable (nothing stored).
        """
        if not is_client_msg_id(client_msg_id):
            raise Invalid(f"client_msg_id: 1..{MAX_CLIENT_MSG_ID_CHARS} characters, no NUL")
        check_text(text, self.max_text_chars, allow_empty=bool(media_ids))
        wait = self.limiter.take(principal.user_id)
        if wait:
            raise RateLimited("too many messages; slow down", wait)
        media: tuple[MediaRef, ...] = ()
        if media_ids:
            if self.media is None:
                raise Invalid("media_ids: this server stores no media")
            media = await self.media.for_send(principal, media_ids)
        outcome = await self.writer.submit(
            SendRequest(principal.user_id, channel_id, client_msg_id, text, media=media, reply_to=reply_to)
        )
        return outcome.ack

    async def history(
        self,
        principal: Principal,
        channel_id: int,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        thread: int | None = None,
    ) -> list[Message]:
        return await self.messages.history(
            channel_id, principal.user_id, before=before, after=after, limit=limit, thread=thread
        )

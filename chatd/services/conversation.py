"""Edits, deletions, reactions, search and mentions (PROTOCOL §10): the rules, then one commit.

Who may do what is decided here, on the message's locked row handed over by
the store: only the sender edits; the sender, the channel's creator or an
admin deletes (an admin need not be a member: moderation); members react.
Every change that members must learn of is written to their inboxes by the
store in the same transaction (in a large channel, a live hint instead); this
service then wakes the local sessions, as channel changes do.
"""

from __future__ import annotations

import re
import unicodedata

from chatd.db.conversation import Change, ConversationStore, MessageFacts, Rule
from chatd.errors import Forbidden, Invalid, NotFound
from chatd.hub import Hub
from chatd.models import Message, Principal
from chatd.services.events import MessageDeleted, MessageEdited, ReactionChanged
from chatd.services.messaging import check_text

MAX_QUERY_CHARS = 256
_SHORT_NAME = re.compile(r":[a-z0-9_+-]{1,32}:")
#: Code points that may follow an emoji's first one inside the same emoji:
#: variation selectors, the keycap, skin tones, tags, and ZWJ (then another emoji).
_ZWJ = 0x200D
_MODIFIERS = {0xFE0E, 0xFE0F, 0x20E3} | set(range(0x1F3FB, 0x1F400)) | set(range(0xE0020, 0xE0080))
#: Where emoji live (approximating Unicode's Extended_Pictographic and Regional_Indicator).
_EMOJI_RANGES = (
    (0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2300, 0x23FF), (0x2B00, 0x2BFF), (0x2190, 0x21FF),
    (0x2900, 0x297F), (0x25A0, 0x25FF), (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3299),
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122),
    (0x2139, 0x2139), (0x24C2, 0x24C2),
)
_KEYCAP_BASES = set("0123456789#*")
MAX_EMOJI_CODE_POINTS = 16


def _is_pictograph(ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in _EMOJI_RANGES)


def check_emoji(emoji: str) -> str:
    """One Unicode emoji (possibly a ZWJ sequence, with modifiers) or a ``:short_name:``; else Invalid."""
    if _SHORT_NAME.fullmatch(emoji):
        return emoji
    emoji = unicodedata.normalize("NFC", emoji)
    if 0 < len(emoji) <= MAX_EMOJI_CODE_POINTS and _is_single_emoji(emoji):
        return emoji
    raise Invalid("emoji: one Unicode emoji or a :short_name: of 1..32 characters [a-z0-9_+-]")


def _is_single_emoji(text: str) -> bool:
    first = text[0]
    if first in _KEYCAP_BASES:  # 1️⃣: digit, optional VS16, keycap
        return text[1:] in ("\u20e3", "\ufe0f\u20e3")
    if not _is_pictograph(first):
        return False
    if 0x1F1E6 <= ord(first) <= 0x1F1FF:  # a flag: exactly two regional indicators
        return len(text) == 2 and 0x1F1E6 <= ord(text[1]) <= 0x1F1FF
    after_zwj = False
    for ch in text[1:]:
        cp = ord(ch)
        if after_zwj:
            if not _is_pictograph(ch):
                return False
            after_zwj = False
        elif cp == _ZWJ:
            after_zwj = True
        elif cp not in _MODIFIERS:
            return False
    return not after_zwj


def _may_edit(by: int) -> Rule:
    def rule(message: MessageFacts) -> None:
        if message.deleted:
            raise NotFound("the message was deleted")
        if message.sender_id != by:
            raise Forbidden("only its sender may edit a message")

    return rule


def _may_delete(by: int, by_admin: bool) -> Rule:
    def rule(message: MessageFacts) -> None:
        if by_admin or message.sender_id == by or message.channel_creator == by:
            return
        raise Forbidden("only its sender, the channel's creator or an admin may delete a message")

    return rule


class ConversationService:
    def __init__(self, store: ConversationStore, hub: Hub, *, max_text_chars: int, inbox_max_members: int) -> None:
        self.store = store
        self.hub = hub
        self.max_text_chars = max_text_chars
        self.inbox_max_members = inbox_max_members

    def _wake(self, change: Change) -> None:
        self.hub.advance(change.advances)

    async def edit(self, principal: Principal, channel_id: int, seq: int, text: str) -> Message:
        check_text(text, self.max_text_chars)
        by = principal.user_id
        message, change = await self.store.edit(
            channel_id, seq, by, text, _may_edit(by), MessageEdited(channel_id, seq).to_data(), self.inbox_max_members
        )
        self._wake(change)
        return message

    async def delete(self, principal: Principal, channel_id: int, seq: int) -> None:
        by = principal.user_id
        change = await self.store.delete(
            channel_id,
            seq,
            by,
            principal.is_admin,
            _may_delete(by, principal.is_admin),
            MessageDeleted(channel_id, seq, by).to_data(),
            self.inbox_max_members,
        )
        self._wake(change)

    async def react(self, principal: Principal, channel_id: int, seq: int, emoji: str, *, add: bool) -> None:
        emoji = check_emoji(emoji)
        user = principal.user_id
        event = ReactionChanged(channel_id, seq, user, emoji, "added" if add else "removed").to_data()
        change = await self.store.react(channel_id, seq, user, emoji, add, event, self.inbox_max_members)
        self._wake(change)

    async def search(
        self, principal: Principal, query: str, channel_id: int | None, before: int | None, limit: int
    ) -> list[Message]:
        if not query.strip() or len(query) > MAX_QUERY_CHARS or "\x00" in query:
            raise Invalid(f"q: 1..{MAX_QUERY_CHARS} characters, no NUL")
        if before is not None and channel_id is None:
            raise Invalid("before: a seq of one channel, so it needs channel_id")
        return await self.store.search(principal.user_id, query, channel_id, before, limit)

    async def mentions(self, principal: Principal, before: int | None, limit: int) -> list[tuple[int, Message]]:
        return await self.store.mentions_of(principal.user_id, before, limit)

"""One store per aggregate, all over the same :class:`~chatd.db.bridge.Database`.

Only wiring: each store is its own module with its own statements, and a
service is handed the stores it needs (never this object's methods; it has
none). A new feature (receipts, presence, media, push...) adds its module
under ``chatd/db/`` and a field here.
"""

from __future__ import annotations

import attrs

from chatd.db.bridge import Database
from chatd.db.channels import ChannelStore
from chatd.db.conversation import ConversationStore
from chatd.db.inbox import InboxStore
from chatd.db.media import MediaStore
from chatd.db.messages import MessageStore
from chatd.db.nodes import NodeStore
from chatd.db.presence import PresenceStore
from chatd.db.receipts import ReceiptStore
from chatd.db.push import PushStore
from chatd.db.retention import RetentionStore
from chatd.db.users import UserStore
from chatd.db.verify import Checks


@attrs.frozen
class Stores:
    db: Database
    users: UserStore
    channels: ChannelStore
    messages: MessageStore
    conversation: ConversationStore
    inbox: InboxStore
    nodes: NodeStore
    checks: Checks
    receipts: ReceiptStore
    presence: PresenceStore
    media: MediaStore
    push: PushStore
    retention: RetentionStore

    @classmethod
    def over(cls, db: Database) -> Stores:
        return cls(
            db=db,
            users=UserStore(db),
            channels=ChannelStore(db),
            messages=MessageStore(db),
            conversation=ConversationStore(db),
            inbox=InboxStore(db),
            nodes=NodeStore(db),
            checks=Checks(db),
            receipts=ReceiptStore(db),
            presence=PresenceStore(db),
            media=MediaStore(db),
            push=PushStore(db),
            retention=RetentionStore(db),
        )

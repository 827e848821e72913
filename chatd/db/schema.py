"""The tables, once, as SQLAlchemy Core: the single description of the schema.

The migrations in ``migrations/`` are what builds the database; a test builds a
database from them and checks it against these definitions (tables, columns,
types, nullability, keys and indexes), so the two cannot drift apart. The
tests read the schema's shape from here rather than from a second hand-written
list. (``chatd verify`` checks the stored data, not the schema: its queries are
in :mod:`chatd.db.verify`.)
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, TSVECTOR

metadata = MetaData()

TIMESTAMPTZ = TIMESTAMP(timezone=True)

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("username", Text, nullable=False),
    Column("display_name", Text, nullable=False),
    Column("password_hash", Text, nullable=True),
    Column("is_admin", Boolean, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("inbox_head", BigInteger, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Index("users_username_key", func.lower(Column("username", Text)), unique=True),
)

devices = Table(
    "devices",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("token_hash", LargeBinary, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("revoked_at", TIMESTAMPTZ, nullable=True),
    Index("devices_token_hash_key", "token_hash", unique=True),
    Index("devices_user_id_idx", "user_id"),
)

channels = Table(
    "channels",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("created_by", BigInteger, ForeignKey("users.id"), nullable=True),
    Column("dm_key", Text, nullable=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("member_count", Integer, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    CheckConstraint("kind IN ('dm', 'group')"),
    Index("channels_dm_key_key", "dm_key", unique=True),
)

members = Table(
    "members",
    metadata,
    Column("channel_id", BigInteger, ForeignKey("channels.id"), nullable=False),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("joined_at", TIMESTAMPTZ, nullable=False),
    Column("delivered_seq", BigInteger, nullable=False),
    Column("read_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("channel_id", "user_id"),
    Index("members_user_id_idx", "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", BigInteger, nullable=False),
    Column("client_msg_id", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    # 0006 (PROTOCOL §10): the thread's root, edit and deletion marks, the text's search vector.
    Column("reply_to", BigInteger, nullable=True),
    Column("edited_at", TIMESTAMPTZ, nullable=True),
    Column("deleted_at", TIMESTAMPTZ, nullable=True),
    Column("deleted_by", BigInteger, nullable=True),
    Column("search", TSVECTOR, Computed("to_tsvector('simple'::regconfig, text)", persisted=True), nullable=True),
    PrimaryKeyConstraint("channel_id", "seq"),
    Index("messages_sender_client_msg_id_key", "sender_id", "client_msg_id", unique=True),
    Index("messages_search_idx", "search", postgresql_using="gin"),
    Index("messages_thread_idx", "channel_id", "reply_to", "seq", postgresql_where=text("reply_to IS NOT NULL")),
)

message_edits = Table(
    "message_edits",
    metadata,
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("edited_by", BigInteger, nullable=False),
    Column("edited_at", TIMESTAMPTZ, nullable=False),
    PrimaryKeyConstraint("channel_id", "seq", "version"),
)

reactions = Table(
    "reactions",
    metadata,
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("emoji", Text, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    PrimaryKeyConstraint("channel_id", "seq", "emoji", "user_id"),
)

mentions = Table(
    "mentions",
    metadata,
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("id", BigInteger, Identity(always=True), nullable=False),
    PrimaryKeyConstraint("channel_id", "seq", "user_id"),
    Index("mentions_user_idx", "user_id", "id"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("user_id", BigInteger, nullable=False),
    Column("inbox_seq", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=True),
    Column("data", JSONB, nullable=True),
    PrimaryKeyConstraint("user_id", "inbox_seq"),
    CheckConstraint("kind IN ('message', 'receipt', 'member', 'channel', 'edit', 'delete', 'reaction')"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("started_at", TIMESTAMPTZ, nullable=False),
    Column("heartbeat_at", TIMESTAMPTZ, nullable=False),
    Column("connections", Integer, nullable=False),
)

node_users = Table(
    "node_users",
    metadata,
    Column("node", Text, ForeignKey("nodes.name", ondelete="CASCADE"), nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("connections", Integer, nullable=False),
    Column("since", TIMESTAMPTZ, nullable=False),
    PrimaryKeyConstraint("node", "user_id"),
    Index("node_users_user_id_idx", "user_id"),
)

node_echo = Table(
    "node_echo",
    metadata,
    Column("node", Text, primary_key=True),
    Column("roundtrip_s", Double),
    Column("error", Text),
    Column("at", TIMESTAMPTZ, nullable=False),
)

retention_cursor = Table(
    "retention_cursor",
    metadata,
    Column("channel_id", BigInteger, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

user_presence = Table(
    "user_presence",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_seen", TIMESTAMPTZ, nullable=False),
)

# --- media and push (migrations/0005_media_push.sql) ---------------------------

media_chunks = Table(
    "media_chunks",
    metadata,
    Column("sha256", LargeBinary, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("touched_at", TIMESTAMPTZ, nullable=False),
)

media_blobs = Table(
    "media_blobs",
    metadata,
    Column("sha256", LargeBinary, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("touched_at", TIMESTAMPTZ, nullable=False),
)

media_blob_chunks = Table(
    "media_blob_chunks",
    metadata,
    Column("blob_sha256", LargeBinary, ForeignKey("media_blobs.sha256", ondelete="CASCADE"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("chunk_sha256", LargeBinary, ForeignKey("media_chunks.sha256"), nullable=False),
    Column("start_byte", BigInteger, nullable=False),
    Column("size", Integer, nullable=False),
    PrimaryKeyConstraint("blob_sha256", "idx"),
    Index("media_blob_chunks_chunk_idx", "chunk_sha256"),
)

media = Table(
    "media",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("uploader_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("blob_sha256", LargeBinary, ForeignKey("media_blobs.sha256"), nullable=False),
    Column("content_type", Text, nullable=False),
    Column("filename", Text, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("posted_at", TIMESTAMPTZ, nullable=True),
    Index("media_blob_idx", "blob_sha256"),
    Index("media_orphans_idx", "created_at", postgresql_where="posted_at IS NULL"),
)

message_media = Table(
    "message_media",
    metadata,
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("position", SmallInteger, nullable=False),
    Column("media_id", BigInteger, ForeignKey("media.id"), nullable=False),
    PrimaryKeyConstraint("channel_id", "seq", "position"),
    Index("message_media_media_idx", "media_id"),
)

push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("device_id", BigInteger, ForeignKey("devices.id"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("p256dh", Text, nullable=True),
    Column("auth", Text, nullable=True),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    CheckConstraint("kind IN ('webhook', 'webpush')"),
    Index("push_subscriptions_user_idx", "user_id"),
    Index("push_subscriptions_device_url_key", "device_id", "url", unique=True),
)

push_outbox = Table(
    "push_outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("subscription_id", BigInteger, ForeignKey("push_subscriptions.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("channel_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("mention", Boolean, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    Column("due_at", TIMESTAMPTZ, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("claimed_by", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("push_outbox_due_idx", "due_at"),
    Index("push_outbox_subscription_idx", "subscription_id"),
)

push_vapid = Table(
    "push_vapid",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("private_pem", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("created_at", TIMESTAMPTZ, nullable=False),
    CheckConstraint("id = 1"),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("applied_at", TIMESTAMPTZ, nullable=False),
    # Added by chatd.db.migrate itself (not a migration file): see its docstring.
    Column("release", Text, nullable=True),
    Column("min_reader", Integer, nullable=False),
)

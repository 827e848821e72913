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
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

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
    PrimaryKeyConstraint("channel_id", "seq"),
    Index("messages_sender_client_msg_id_key", "sender_id", "client_msg_id", unique=True),
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
    CheckConstraint("kind IN ('message', 'receipt', 'member', 'channel')"),
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

user_presence = Table(
    "user_presence",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_seen", TIMESTAMPTZ, nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("applied_at", TIMESTAMPTZ, nullable=False),
)

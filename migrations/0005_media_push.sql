-- release: 0.2
-- Media (PROTOCOL §2) and offline push (§7).
--
-- Media bytes live in PostgreSQL, in chunks of at most 256 KiB, so that every
-- node (they share only the database) serves every upload and `chatd backup`
-- (pg_dump) includes them. Chunks are content-addressed by their SHA-256 and
-- a stored file (a blob, addressed by the SHA-256 of the whole file) is the
-- list of its chunks: the same bytes uploaded twice are stored once, and an
-- upload writes each chunk once, as it arrives, with no copy at the end.
-- `media` rows are the uploads (who, what type, what name), several of which
-- may share one blob. Chunks are stored uncompressed (EXTERNAL): media is
-- mostly compressed already, and a Range read then fetches only its slice.

CREATE TABLE media_chunks (
    sha256     bytea       PRIMARY KEY,
    data       bytea       NOT NULL,
    -- Written or re-used by an upload: `chatd media gc` leaves chunks touched
    -- within media.orphan_grace_s alone (an upload may still be running).
    touched_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE media_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE media_blobs (
    sha256      bytea       PRIMARY KEY,
    size        bigint      NOT NULL,
    chunk_count integer     NOT NULL,
    touched_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE media_blob_chunks (
    blob_sha256  bytea   NOT NULL REFERENCES media_blobs (sha256) ON DELETE CASCADE,
    idx          integer NOT NULL,
    chunk_sha256 bytea   NOT NULL REFERENCES media_chunks (sha256),
    -- Offset of this chunk's first byte in the file: a Range finds its chunks.
    start_byte   bigint  NOT NULL,
    size         integer NOT NULL,
    PRIMARY KEY (blob_sha256, idx)
);
CREATE INDEX media_blob_chunks_chunk_idx ON media_blob_chunks (chunk_sha256);

CREATE TABLE media (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uploader_id  bigint      NOT NULL REFERENCES users (id),
    blob_sha256  bytea       NOT NULL REFERENCES media_blobs (sha256),
    content_type text        NOT NULL,
    filename     text,
    width        integer,
    height       integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set by the send that first carried it; NULL: an orphan `chatd media gc` may take.
    posted_at    timestamptz
);
CREATE INDEX media_blob_idx ON media (blob_sha256);
CREATE INDEX media_orphans_idx ON media (created_at) WHERE posted_at IS NULL;

-- Which media a message carries, in the order given in the send.
CREATE TABLE message_media (
    channel_id bigint   NOT NULL,
    seq        bigint   NOT NULL,
    position   smallint NOT NULL,
    media_id   bigint   NOT NULL REFERENCES media (id),
    PRIMARY KEY (channel_id, seq, position)
);
CREATE INDEX message_media_media_idx ON message_media (media_id);

-- Push targets: one row per subscription of a device.
CREATE TABLE push_subscriptions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id),
    device_id  bigint      NOT NULL REFERENCES devices (id),
    kind       text        NOT NULL CHECK (kind IN ('webhook', 'webpush')),
    url        text        NOT NULL,
    p256dh     text,
    auth       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_subscriptions_user_idx ON push_subscriptions (user_id);
CREATE UNIQUE INDEX push_subscriptions_device_url_key ON push_subscriptions (device_id, url);

-- The outbox: written in the transaction of the message it announces, so a
-- crash after the commit cannot lose a push. Workers on every node claim due
-- rows with FOR UPDATE SKIP LOCKED and push due_at past the delivery's
-- timeout (a lease): a row is delivered by one node at a time, and a node
-- that dies mid-delivery leaves it to be taken again when the lease ends.
CREATE TABLE push_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint      NOT NULL REFERENCES push_subscriptions (id) ON DELETE CASCADE,
    user_id         bigint      NOT NULL,
    channel_id      bigint      NOT NULL,
    seq             bigint      NOT NULL,
    -- A mention (PROTOCOL §10) is pushed under its own rule; false until mentions exist.
    mention         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    claimed_by      text,
    last_error      text
);
CREATE INDEX push_outbox_due_idx ON push_outbox (due_at);
CREATE INDEX push_outbox_subscription_idx ON push_outbox (subscription_id);

-- The VAPID key pair (RFC 8292): made by the first node that starts, then
-- shared, so every node signs with the same key.
CREATE TABLE push_vapid (
    id          integer     PRIMARY KEY CHECK (id = 1),
    private_pem text        NOT NULL,
    public_key  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

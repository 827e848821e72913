-- release: 0.2
-- Conversation features (PROTOCOL §10): edits, deletions, reactions, replies,
-- mentions and full-text search.
--
-- Only additions: new columns on messages (all nullable or with a default, so
-- a node of the previous release keeps inserting messages as before), new
-- tables, new functions. chatd_send_batch is untouched: a send's reply link
-- and mentions are written by further statements in the same transaction
-- (chatd/db/messages.py).
--
-- Lock order (extends 0003's "channel row, then users rows by id"): a change
-- to an existing message locks that message's row (FOR UPDATE to edit or
-- delete, FOR SHARE to react: reactors never wait for each other), then the
-- users' rows by id (chatd_append_inbox). It never takes the channel row, and
-- the send path never locks an existing message (a reply's root is only
-- read; reply counts are counted, not stored): no cycle.
--
-- None of the new tables has a foreign key to users (see 0003: a KEY SHARE
-- on a users row, out of order, is what deadlocked with the inbox counters).

-- reply_to: the thread's root seq (a reply to a reply attaches to the root).
-- A root's reply_count is counted from these (tombstones included: a deleted
-- reply stays in the thread), through messages_thread_idx.
-- search: the text's tsvector, kept with the row by PostgreSQL itself (so
-- sends of a previous-release node are indexed too); a deletion empties the
-- text and so the vector. Configuration 'simple': no stemming and no stop
-- words, the same for every language (see README).
ALTER TABLE messages
    ADD COLUMN reply_to    bigint,
    ADD COLUMN edited_at   timestamptz,
    ADD COLUMN deleted_at  timestamptz,
    ADD COLUMN deleted_by  bigint,
    ADD COLUMN search      tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, text)) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search);
CREATE INDEX messages_thread_idx ON messages (channel_id, reply_to, seq) WHERE reply_to IS NOT NULL;

-- The edit history, append-only: version 0 is the text as sent (written at
-- the first edit), each edit appends the next version; messages.text is the
-- text of the highest version (a projection kept for reads). A deletion
-- erases the message's rows here (the one exception to append-only).
CREATE TABLE message_edits (
    channel_id bigint      NOT NULL,
    seq        bigint      NOT NULL,
    version    integer     NOT NULL,
    text       text        NOT NULL,
    edited_by  bigint      NOT NULL,
    edited_at  timestamptz NOT NULL,
    PRIMARY KEY (channel_id, seq, version)
);

-- One row per (message, emoji, user). Counts are never stored: they are
-- counted from these rows when read, so many people reacting at once insert
-- rows side by side and never queue on one counter row.
CREATE TABLE reactions (
    channel_id bigint      NOT NULL,
    seq        bigint      NOT NULL,
    emoji      text        NOT NULL,
    user_id    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, seq, emoji, user_id)
);

-- Who a message mentions, resolved at send and at each edit. Keyed by the
-- message (the push path asks "is this recipient mentioned in (channel, seq)")
-- and indexed by user for GET /v1/mentions (id: the order mentions were made).
CREATE TABLE mentions (
    channel_id bigint NOT NULL,
    seq        bigint NOT NULL,
    user_id    bigint NOT NULL,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (channel_id, seq, user_id)
);
CREATE INDEX mentions_user_idx ON mentions (user_id, id);

-- New inbox event kinds. Widening the check is compatible with nodes of the
-- previous release, which never write them.
ALTER TABLE inbox DROP CONSTRAINT IF EXISTS inbox_kind_check;
ALTER TABLE inbox ADD CONSTRAINT inbox_kind_check
    CHECK (kind IN ('message', 'receipt', 'member', 'channel', 'edit', 'delete', 'reaction'));

-- The members a text mentions: "@username" of a member (case-insensitive; a
-- name is letters, digits, "_", "." and "-", trailing "." and "-" dropped, and
-- the "@" must not follow a letter or digit, so "a@b.org" mentions nobody),
-- and every member for "@channel" when the channel has at most p_inbox_max
-- members. Sorted, distinct.
CREATE FUNCTION chatd_resolve_mentions(p_channel bigint, p_text text, p_inbox_max integer)
RETURNS bigint[] LANGUAGE sql STABLE AS $$
    WITH names AS (
        SELECT DISTINCT lower(rtrim(m[2], '.-')) AS name
        FROM regexp_matches(p_text, '(^|[^[:alnum:]_])@([[:alnum:]_][[:alnum:]_.-]*)', 'g') AS m
    )
    SELECT coalesce(array_agg(DISTINCT mb.user_id ORDER BY mb.user_id), '{}')
    FROM members mb JOIN users u ON u.id = mb.user_id
    WHERE mb.channel_id = p_channel
      AND (lower(u.username) IN (SELECT name FROM names)
           OR (EXISTS (SELECT 1 FROM names WHERE name = 'channel')
               AND (SELECT c.member_count FROM channels c WHERE c.id = p_channel) <= p_inbox_max))
$$;

-- A change to a large channel's message (no inbox rows): every node pushes a
-- live frame to its connected members. "x:<channel>:<seq>:edit",
-- "x:<channel>:<seq>:delete:<by>", "x:<channel>:<seq>:reaction:<user>:<added|removed>:<emoji>".
CREATE FUNCTION chatd_notify_change(p_channel bigint, p_seq bigint, p_detail text)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('chatd_inbox', 'x:' || p_channel || ':' || p_seq || ':' || p_detail)
$$;

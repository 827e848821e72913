-- release: 0.1
-- chatd schema, version 1: users, devices, channels, members, messages, inbox.
--
-- Invariants (checked by `chatd verify`):
--   * per channel, messages.seq is 1..channels.last_seq with no gap;
--   * per user, inbox.inbox_seq is 1..users.inbox_head with no gap;
--   * both counters are taken under a row lock held until commit, so they are
--     assigned in commit order: a reader that has seen k never later finds a
--     new row below k.
-- Lock order, everywhere: the channel row first, then users rows by id.
-- messages and inbox carry no foreign keys: they are the hot tables, and they
-- shard by channel_id and user_id respectively.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL,
    display_name  text        NOT NULL,
    password_hash text,
    is_admin      boolean     NOT NULL DEFAULT false,
    disabled      boolean     NOT NULL DEFAULT false,
    inbox_head    bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE devices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    name        text        NOT NULL,
    token_hash  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX devices_token_hash_key ON devices (token_hash);
CREATE INDEX devices_user_id_idx ON devices (user_id);

CREATE TABLE channels (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('dm', 'group')),
    name          text,
    created_by    bigint      REFERENCES users (id),
    dm_key        text,
    last_seq      bigint      NOT NULL DEFAULT 0,
    member_count  integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX channels_dm_key_key ON channels (dm_key);

CREATE TABLE members (
    channel_id    bigint      NOT NULL REFERENCES channels (id),
    user_id       bigint      NOT NULL REFERENCES users (id),
    joined_at     timestamptz NOT NULL DEFAULT now(),
    delivered_seq bigint      NOT NULL DEFAULT 0,
    read_seq      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX members_user_id_idx ON members (user_id);

CREATE TABLE messages (
    channel_id    bigint      NOT NULL,
    seq           bigint      NOT NULL,
    sender_id     bigint      NOT NULL,
    client_msg_id text        NOT NULL,
    text          text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, seq)
);
CREATE UNIQUE INDEX messages_sender_client_msg_id_key ON messages (sender_id, client_msg_id);

CREATE TABLE inbox (
    user_id     bigint NOT NULL,
    inbox_seq   bigint NOT NULL,
    kind        text   NOT NULL CHECK (kind IN ('message', 'receipt', 'member', 'channel')),
    channel_id  bigint NOT NULL,
    seq         bigint,
    data        jsonb,
    PRIMARY KEY (user_id, inbox_seq)
);

-- The one audited place that says who receives a channel's events: its members.
CREATE FUNCTION chatd_recipients(p_channel bigint) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}')
    FROM members WHERE channel_id = p_channel
$$;

-- Tell every node (at commit) whose inbox advanced, and to where: "uid:head,...".
-- Too many users for one payload (PostgreSQL's limit is 8000 bytes): a coarse
-- hint, "*", and every node re-reads. Notifications are hints, never data.
-- p_prefix "w:" marks a group-commit batch, whose own node delivers from the
-- batch's result and so may skip the hint (it knows its backends' pids).
CREATE FUNCTION chatd_notify_inbox(p_users bigint[], p_heads bigint[], p_prefix text DEFAULT '')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_hint text;
BEGIN
    v_hint := array_to_string(ARRAY(
        SELECT u || ':' || max(h) FROM unnest(p_users, p_heads) AS t (u, h) GROUP BY u), ',');
    IF length(v_hint) > 7000 THEN
        v_hint := '*';
    END IF;
    IF v_hint <> '' THEN
        PERFORM pg_notify('chatd_inbox', p_prefix || v_hint);
    END IF;
END $$;

-- Append one event to each user's inbox. The users' counter rows are locked
-- in id order first: an UPDATE ... WHERE id = ANY() alone locks in plan order
-- and deadlocks against a concurrent send once the planner picks a bitmap scan.
CREATE FUNCTION chatd_append_inbox(
    p_users bigint[], p_kind text, p_channel bigint, p_seq bigint, p_data jsonb,
    p_notify boolean DEFAULT true,
    OUT user_ids bigint[], OUT inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR UPDATE;
    WITH bumped AS (
        UPDATE users SET inbox_head = inbox_head + 1
        WHERE id = ANY (p_users)
        RETURNING id, inbox_head
    ), appended AS (
        INSERT INTO inbox (user_id, inbox_seq, kind, channel_id, seq, data)
        SELECT id, inbox_head, p_kind, p_channel, p_seq, p_data FROM bumped
        RETURNING user_id, inbox_seq
    )
    SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}'),
           coalesce(array_agg(inbox_seq ORDER BY user_id), '{}')
    INTO user_ids, inbox_seqs
    FROM appended;
    IF p_notify THEN
        PERFORM chatd_notify_inbox(user_ids, inbox_seqs);
    END IF;
END $$;

-- Messages of large channels (more members than fanout.inbox_max_members)
-- skip the inboxes; every node learns of them by this hint and pushes a live
-- frame to its connected members: "c:<channel_id>:<seq>".
CREATE FUNCTION chatd_notify_channel(p_channel bigint, p_seq bigint, p_prefix text DEFAULT '')
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('chatd_inbox', p_prefix || 'c:' || p_channel || ':' || p_seq)
$$;

-- One send, one round trip: idempotency check, membership, seq, message row,
-- inbox fan-out. status is 'sent', 'duplicate' or 'not_member'.
CREATE FUNCTION chatd_send(
    p_sender bigint, p_channel bigint, p_client_msg_id text, p_text text, p_inbox_max integer,
    p_notify boolean DEFAULT true,
    OUT status text, OUT channel_id bigint, OUT seq bigint, OUT created_at timestamptz,
    OUT user_ids bigint[], OUT inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_members integer;
BEGIN
    SELECT m.channel_id, m.seq, m.created_at INTO channel_id, seq, created_at
    FROM messages m WHERE m.sender_id = p_sender AND m.client_msg_id = p_client_msg_id;
    IF FOUND THEN
        status := 'duplicate';
        RETURN;
    END IF;
    PERFORM 1 FROM members mb WHERE mb.channel_id = p_channel AND mb.user_id = p_sender;
    IF NOT FOUND THEN
        status := 'not_member';
        RETURN;
    END IF;
    UPDATE channels c SET last_seq = c.last_seq + 1 WHERE c.id = p_channel
    RETURNING c.last_seq, c.member_count INTO seq, v_members;
    INSERT INTO messages AS m (channel_id, seq, sender_id, client_msg_id, text)
    VALUES (p_channel, seq, p_sender, p_client_msg_id, p_text)
    ON CONFLICT (sender_id, client_msg_id) DO NOTHING
    RETURNING m.created_at INTO created_at;
    IF NOT FOUND THEN
        -- A concurrent send of the same client_msg_id committed first (we
        -- waited on its index entry). We still hold the channel row lock, so
        -- giving the seq back leaves no gap.
        UPDATE channels c SET last_seq = c.last_seq - 1 WHERE c.id = p_channel;
        SELECT m.channel_id, m.seq, m.created_at INTO channel_id, seq, created_at
        FROM messages m WHERE m.sender_id = p_sender AND m.client_msg_id = p_client_msg_id;
        status := 'duplicate';
        RETURN;
    END IF;
    channel_id := p_channel;
    status := 'sent';
    IF v_members <= p_inbox_max THEN
        SELECT a.user_ids, a.inbox_seqs INTO user_ids, inbox_seqs
        FROM chatd_append_inbox(chatd_recipients(p_channel), 'message', p_channel, seq, NULL, p_notify) a;
    ELSE
        -- A large channel: written once, not to inboxes; nodes push it live.
        user_ids := '{}';
        inbox_seqs := '{}';
        IF p_notify THEN
            PERFORM chatd_notify_channel(p_channel, seq);
        END IF;
    END IF;
END $$;

-- Group commit: many sends in one transaction (one fsync), each with exactly
-- the semantics of chatd_send, answered in the order given. Every lock the
-- batch will need is taken first, in the global order (channel rows by id,
-- then users rows by id), so batches running side by side, and single
-- transactions, cannot deadlock with it. A non-member or a duplicate is a
-- status of its own item, never a failure of the batch. One NOTIFY per batch.
CREATE FUNCTION chatd_send_batch(
    p_senders bigint[], p_channels bigint[], p_client_msg_ids text[], p_texts text[], p_inbox_max integer)
RETURNS TABLE (status text, channel_id bigint, seq bigint, created_at timestamptz,
               user_ids bigint[], inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_sent record;
    v_users bigint[] := '{}';
    v_heads bigint[] := '{}';
BEGIN
    PERFORM 1 FROM channels c WHERE c.id = ANY (p_channels) ORDER BY c.id FOR UPDATE;
    -- (Large channels write no inbox rows: their members' counters are not touched.)
    PERFORM 1 FROM users u
    WHERE u.id IN (SELECT mb.user_id FROM members mb JOIN channels c ON c.id = mb.channel_id
                   WHERE c.id = ANY (p_channels) AND c.member_count <= p_inbox_max)
    ORDER BY u.id FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_senders, 1), 0) LOOP
        SELECT * INTO v_sent
        FROM chatd_send(p_senders[i], p_channels[i], p_client_msg_ids[i], p_texts[i], p_inbox_max, false);
        status := v_sent.status;
        channel_id := v_sent.channel_id;
        seq := v_sent.seq;
        created_at := v_sent.created_at;
        user_ids := v_sent.user_ids;
        inbox_seqs := v_sent.inbox_seqs;
        IF status = 'sent' AND cardinality(user_ids) = 0 THEN
            PERFORM chatd_notify_channel(channel_id, seq, 'w:');
        ELSIF user_ids IS NOT NULL THEN
            v_users := v_users || user_ids;
            v_heads := v_heads || inbox_seqs;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM chatd_notify_inbox(v_users, v_heads, 'w:');
END $$;

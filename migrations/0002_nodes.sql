-- The cluster's registry: live nodes with a heartbeat, and which users are
-- connected on which node (the groundwork of presence). A node that stops
-- heart-beating is gone: any node deletes it (and, by cascade, its
-- connections) once its heartbeat is older than the expiry.

CREATE TABLE nodes (
    name         text        PRIMARY KEY,
    url          text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    connections  integer     NOT NULL DEFAULT 0
);

CREATE TABLE node_users (
    node        text        NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    user_id     bigint      NOT NULL,
    connections integer     NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, user_id)
);
CREATE INDEX node_users_user_id_idx ON node_users (user_id);

-- Messages of large channels (more members than fanout.inbox_max_members)
-- skip the inboxes; every node learns of them by this hint and pushes a live
-- frame to its connected members: "c:<channel_id>:<seq>".
CREATE FUNCTION chatd_notify_channel(p_channel bigint, p_seq bigint, p_prefix text DEFAULT '')
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('chatd_inbox', p_prefix || 'c:' || p_channel || ':' || p_seq)
$$;

-- chatd_send and chatd_send_batch, now hinting large channels' messages.
-- One send, one round trip: idempotency check, membership, seq, message row,
-- inbox fan-out. status is 'sent', 'duplicate' or 'not_member'.
CREATE OR REPLACE FUNCTION chatd_send(
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
CREATE OR REPLACE FUNCTION chatd_send_batch(
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

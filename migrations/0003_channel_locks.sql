-- release: 0.1
-- One lock order for every transaction that changes a channel or sends into
-- one: the channel row first, then the users' rows by id, all of them taken
-- before anything else is written.
--
-- Channel changes used to insert members (and channels) first: each foreign
-- key to users takes a KEY SHARE lock on the user's row, out of order and
-- before chatd_append_inbox asked for FOR UPDATE on the same rows, which KEY
-- SHARE blocks. Two such transactions sharing users each waited for the
-- other's KEY SHARE: a deadlock (ten concurrent group creations by one user,
-- whose row every channel's created_by references, were enough).
--
-- Now channel changes call chatd_lock_users on every user they will touch
-- (members, added users, the creator) right after the channel row, and the
-- users' rows are locked FOR NO KEY UPDATE: the lock an UPDATE of inbox_head
-- takes anyway, which still serialises the counter but does not conflict with
-- KEY SHARE, so a foreign-key check elsewhere (a login's device row) never
-- waits on, or blocks, a send.
--
-- chatd_send also checks membership again once it holds the channel row, so a
-- send racing a removal of its sender is refused rather than stored.

CREATE FUNCTION chatd_lock_users(p_users bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR NO KEY UPDATE;
END $$;

CREATE OR REPLACE FUNCTION chatd_append_inbox(
    p_users bigint[], p_kind text, p_channel bigint, p_seq bigint, p_data jsonb,
    p_notify boolean DEFAULT true,
    OUT user_ids bigint[], OUT inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chatd_lock_users(p_users);
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

-- As in 0001, with the users' rows locked by chatd_lock_users.
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
    PERFORM chatd_lock_users(ARRAY(
        SELECT mb.user_id FROM members mb JOIN channels c ON c.id = mb.channel_id
        WHERE c.id = ANY (p_channels) AND c.member_count <= p_inbox_max));
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

-- As in 0001, and membership is checked again once the channel row is locked:
-- a removal commits under that lock, so a send that passed the first check
-- while the removal was running no longer posts as a member that was removed.
-- (chatd_send_batch locks its channels before calling this: there, the first
-- check already sees every committed removal.)
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
    PERFORM 1 FROM members mb WHERE mb.channel_id = p_channel AND mb.user_id = p_sender;
    IF NOT FOUND THEN
        -- Removed while we waited for the channel row; the seq goes back, no gap.
        UPDATE channels c SET last_seq = c.last_seq - 1 WHERE c.id = p_channel;
        seq := NULL;
        status := 'not_member';
        RETURN;
    END IF;
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

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

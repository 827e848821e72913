-- Receipts (PROTOCOL §5) and the presence groundwork (§6).
--
-- Receipts: members.delivered_seq and members.read_seq (0001) are the
-- watermarks. chatd_receipt_batch commits many receipts in one transaction
-- (group commit, like chatd_send_batch): each one only moves a watermark
-- forward, clamped to the channel's last_seq, and a read also moves delivered
-- up to it. A receipt that moves nothing writes nothing (no row lock, no
-- event). A change in a channel of up to p_fanout_max members appends a
-- `receipt` event to every member's inbox; above it nothing is written but
-- the watermark, and the caller pushes a live receipt_update. One NOTIFY per
-- batch, "w:"-prefixed like a send batch's.
--
-- Lock order (0003): users' rows by id first (chatd_lock_users, for every
-- member of the small channels that will change), then members rows in the
-- order given (the caller sorts by channel, user). No channel row lock: the
-- clamp reads the committed last_seq, which only grows.
--
-- Presence: user_presence keeps each user's last_seen, written lazily (on
-- going offline, and every few minutes while online), so that a restart keeps
-- a sensible last_seen. Live presence is in the nodes' memory.

CREATE TABLE user_presence (
    user_id   bigint      PRIMARY KEY,
    last_seen timestamptz NOT NULL
);

CREATE FUNCTION chatd_receipt_batch(
    p_users bigint[], p_channels bigint[], p_seqs bigint[], p_reads boolean[], p_fanout_max integer)
RETURNS TABLE (status text, seq bigint, large boolean, user_ids bigint[], inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_users bigint[] := '{}';
    v_heads bigint[] := '{}';
    v_changing boolean[] := '{}';
    v_last bigint;
    v_count integer;
    v_target bigint;
    v_ch bigint;
    v_user bigint;
BEGIN
    -- Which receipts would move a watermark (forward-only: one that would not
    -- now never will), so that no-ops lock nothing.
    FOR i IN 1 .. coalesce(array_length(p_users, 1), 0) LOOP
        v_changing := v_changing || EXISTS (
            SELECT 1 FROM members mb JOIN channels c ON c.id = mb.channel_id
            WHERE mb.channel_id = p_channels[i] AND mb.user_id = p_users[i]
              AND CASE WHEN p_reads[i] THEN mb.read_seq ELSE mb.delivered_seq END < least(p_seqs[i], c.last_seq));
    END LOOP;
    PERFORM chatd_lock_users(ARRAY(
        SELECT DISTINCT mb.user_id FROM members mb JOIN channels c ON c.id = mb.channel_id
        WHERE c.member_count <= p_fanout_max AND c.id IN (
            SELECT t.ch FROM unnest(p_channels, v_changing) AS t (ch, changing) WHERE t.changing)));
    FOR i IN 1 .. coalesce(array_length(p_users, 1), 0) LOOP
        v_ch := p_channels[i];
        v_user := p_users[i];
        seq := NULL;
        large := NULL;
        user_ids := '{}';
        inbox_seqs := '{}';
        IF NOT v_changing[i] THEN
            PERFORM 1 FROM members mb WHERE mb.channel_id = v_ch AND mb.user_id = v_user;
            status := CASE WHEN FOUND THEN 'unchanged' ELSE 'not_member' END;
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT c.last_seq, c.member_count INTO v_last, v_count FROM channels c WHERE c.id = v_ch;
        v_target := least(p_seqs[i], v_last);
        IF p_reads[i] THEN
            UPDATE members mb SET read_seq = v_target, delivered_seq = greatest(mb.delivered_seq, v_target)
            WHERE mb.channel_id = v_ch AND mb.user_id = v_user AND mb.read_seq < v_target
            RETURNING mb.read_seq INTO seq;
        ELSE
            UPDATE members mb SET delivered_seq = v_target
            WHERE mb.channel_id = v_ch AND mb.user_id = v_user AND mb.delivered_seq < v_target
            RETURNING mb.delivered_seq INTO seq;
        END IF;
        IF NOT FOUND THEN
            -- Moved by a concurrent batch meanwhile, or the member left.
            PERFORM 1 FROM members mb WHERE mb.channel_id = v_ch AND mb.user_id = v_user;
            status := CASE WHEN FOUND THEN 'unchanged' ELSE 'not_member' END;
            RETURN NEXT;
            CONTINUE;
        END IF;
        status := 'changed';
        large := v_count > p_fanout_max;
        IF NOT large THEN
            SELECT a.user_ids, a.inbox_seqs INTO user_ids, inbox_seqs
            FROM chatd_append_inbox(
                chatd_recipients(v_ch), 'receipt', v_ch, seq,
                jsonb_build_object('channel_id', v_ch, 'user_id', v_user,
                                   'state', CASE WHEN p_reads[i] THEN 'read' ELSE 'delivered' END, 'seq', seq),
                false) a;
            v_users := v_users || user_ids;
            v_heads := v_heads || inbox_seqs;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM chatd_notify_inbox(v_users, v_heads, 'w:');
END $$;

-- A member's watermarks and how many members reached a seq, read from the
-- members rows of the channel (its primary key), never from messages.
CREATE FUNCTION chatd_receipt_counts(p_channel bigint, p_seq bigint, OUT delivered bigint, OUT read bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*) FILTER (WHERE delivered_seq >= p_seq), count(*) FILTER (WHERE read_seq >= p_seq)
    FROM members WHERE channel_id = p_channel
$$;

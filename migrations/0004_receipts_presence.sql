-- Receipts (PROTOCOL §5) and the presence groundwork (§6).
--
-- Receipts: members.delivered_seq and members.read_seq (0001) are the
-- watermarks. chatd_receipt_batch commits many receipts in one transaction
-- (group commit, like chatd_send_batch): each one only moves a watermark
-- forward, clamped to the channel's last_seq, and a read also moves delivered
-- up to it. A receipt that moves nothing writes nothing (no row lock, no
-- event). A change in a channel of up to p_fanout_max members appends a
-- `receipt` event to every member's inbox (the changes of one channel in a
-- batch together: each member's inbox_head moves once per batch); above it nothing is written but
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

-- Append one receipt event per change of one small channel to every member's
-- inbox, all at once: each member's counter moves once by the number of
-- changes (not once per change), and the k-th change gets base + k. The
-- members' rows are already locked. Returns the members and their bases.
CREATE FUNCTION chatd_append_receipts(
    p_channel bigint, p_seqs bigint[], p_datas jsonb[], OUT user_ids bigint[], OUT bases bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_k integer := cardinality(p_seqs);
BEGIN
    WITH bumped AS (
        UPDATE users u SET inbox_head = u.inbox_head + v_k
        WHERE u.id = ANY (chatd_recipients(p_channel))
        RETURNING u.id, u.inbox_head - v_k AS base
    ), appended AS (
        INSERT INTO inbox (user_id, inbox_seq, kind, channel_id, seq, data)
        SELECT b.id, b.base + e.ord, 'receipt', p_channel, e.seq, e.data
        FROM bumped b, unnest(p_seqs, p_datas) WITH ORDINALITY AS e (seq, data, ord)
    )
    SELECT coalesce(array_agg(b.id ORDER BY b.id), '{}'), coalesce(array_agg(b.base ORDER BY b.id), '{}')
    INTO user_ids, bases FROM bumped b;
END $$;

CREATE FUNCTION chatd_receipt_batch(
    p_users bigint[], p_channels bigint[], p_seqs bigint[], p_reads boolean[], p_fanout_max integer)
RETURNS TABLE (status text, seq bigint, large boolean, user_ids bigint[], inbox_seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := coalesce(array_length(p_users, 1), 0);
    v_users bigint[] := '{}';
    v_heads bigint[] := '{}';
    v_changing boolean[] := '{}';
    v_last bigint;
    v_count integer;
    v_target bigint;
    v_moved bigint;
    v_ch bigint;
    v_user bigint;
    -- The current run of consecutive receipts of one channel (the caller sorts by channel).
    g_start integer := 1;
    g_status text[] := '{}';
    g_seq bigint[] := '{}';
    g_large boolean := false;
    g_seqs bigint[] := '{}';
    g_datas jsonb[] := '{}';
    g_ids bigint[];
    g_bases bigint[];
    g_ord integer;
BEGIN
    -- Which receipts would move a watermark (forward-only: one that would not
    -- now never will), so that no-ops lock nothing.
    FOR i IN 1 .. v_n LOOP
        v_changing := v_changing || EXISTS (
            SELECT 1 FROM members mb JOIN channels c ON c.id = mb.channel_id
            WHERE mb.channel_id = p_channels[i] AND mb.user_id = p_users[i]
              AND CASE WHEN p_reads[i] THEN mb.read_seq ELSE mb.delivered_seq END < least(p_seqs[i], c.last_seq));
    END LOOP;
    PERFORM chatd_lock_users(ARRAY(
        SELECT DISTINCT mb.user_id FROM members mb JOIN channels c ON c.id = mb.channel_id
        WHERE c.member_count <= p_fanout_max AND c.id IN (
            SELECT t.ch FROM unnest(p_channels, v_changing) AS t (ch, changing) WHERE t.changing)));
    FOR i IN 1 .. v_n LOOP
        v_ch := p_channels[i];
        v_user := p_users[i];
        v_moved := NULL;
        IF v_changing[i] THEN
            SELECT c.last_seq, c.member_count INTO v_last, v_count FROM channels c WHERE c.id = v_ch;
            v_target := least(p_seqs[i], v_last);
            IF p_reads[i] THEN
                UPDATE members mb SET read_seq = v_target, delivered_seq = greatest(mb.delivered_seq, v_target)
                WHERE mb.channel_id = v_ch AND mb.user_id = v_user AND mb.read_seq < v_target
                RETURNING mb.read_seq INTO v_moved;
            ELSE
                UPDATE members mb SET delivered_seq = v_target
                WHERE mb.channel_id = v_ch AND mb.user_id = v_user AND mb.delivered_seq < v_target
                RETURNING mb.delivered_seq INTO v_moved;
            END IF;
        END IF;
        IF v_moved IS NOT NULL THEN
            g_status := g_status || 'changed'::text;
            g_large := v_count > p_fanout_max;
            IF NOT g_large THEN
                g_seqs := g_seqs || v_moved;
                g_datas := g_datas || jsonb_build_object(
                    'channel_id', v_ch, 'user_id', v_user,
                    'state', CASE WHEN p_reads[i] THEN 'read' ELSE 'delivered' END, 'seq', v_moved);
            END IF;
        ELSE
            -- Nothing to move (or moved by a concurrent batch meanwhile), or not a member.
            PERFORM 1 FROM members mb WHERE mb.channel_id = v_ch AND mb.user_id = v_user;
            g_status := g_status || CASE WHEN FOUND THEN 'unchanged' ELSE 'not_member' END;
        END IF;
        g_seq := g_seq || v_moved;
        -- End of this channel's run: append its events at once, then answer its receipts in order.
        IF i = v_n OR p_channels[i + 1] <> v_ch THEN
            g_ids := '{}';
            g_bases := '{}';
            IF cardinality(g_seqs) > 0 THEN
                SELECT a.user_ids, a.bases INTO g_ids, g_bases FROM chatd_append_receipts(v_ch, g_seqs, g_datas) a;
            END IF;
            g_ord := 0;
            FOR j IN 1 .. cardinality(g_status) LOOP
                status := g_status[j];
                seq := g_seq[j];
                large := CASE WHEN status = 'changed' THEN g_large END;
                user_ids := '{}';
                inbox_seqs := '{}';
                IF status = 'changed' AND NOT g_large THEN
                    g_ord := g_ord + 1;
                    user_ids := g_ids;
                    inbox_seqs := ARRAY(SELECT b + g_ord FROM unnest(g_bases) WITH ORDINALITY AS t (b, o) ORDER BY o);
                    v_users := v_users || user_ids;
                    v_heads := v_heads || inbox_seqs;
                END IF;
                RETURN NEXT;
            END LOOP;
            g_start := i + 1;
            g_status := '{}';
            g_seq := '{}';
            g_seqs := '{}';
            g_datas := '{}';
        END IF;
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

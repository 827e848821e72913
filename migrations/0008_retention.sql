-- release: 0.2
-- Retention (retention.days, chatd/db/retention.py): how far each channel's
-- history has been turned into tombstones.
--
-- The job walks each channel's messages by primary key (channel_id, seq) from
-- this cursor: seqs are given in send order, so a channel's oldest messages
-- are its lowest seqs. No index is added: an index on messages.created_at (or
-- a partial one on live messages) would be written by every send to serve a
-- job that runs once a minute; the primary key is already there. The cursor
-- also means a channel's tombstones are never walked again.
--
-- A cursor row is also the per-channel lock that keeps several nodes running
-- the job from working on the same channel at once (SELECT ... FOR UPDATE SKIP
-- LOCKED: a node that finds it locked leaves the channel to the other).
-- Creating an empty table takes no lock any writer waits for.
CREATE TABLE retention_cursor (
    channel_id bigint PRIMARY KEY,
    -- Every message of the channel with seq <= this one has been looked at
    -- (tombstoned, or was already a tombstone).
    seq        bigint NOT NULL DEFAULT 0
);

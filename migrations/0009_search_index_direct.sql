-- release: 0.2
-- The search index (0006) is updated by each send itself, not through GIN's
-- pending list: with fastupdate on (the default), sends append to a pending
-- list that the send which finds it past gin_pending_list_limit (4 MB) merges
-- into the index inside its own transaction: a pause for that send and for
-- every send queued behind it in group commit, proportional to the list. Direct
-- updates spread that work over the sends (PostgreSQL's CPU per message did
-- not change measurably at 500 msg/s, benchmarks/README.md) and never pause.
-- Only a storage parameter: the index is locked for a moment, nothing is rewritten.
ALTER INDEX messages_search_idx SET (fastupdate = off);

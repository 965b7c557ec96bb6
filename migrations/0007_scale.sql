-- Scale (issue 15): what a restart needs to know without listing storage, and indexes that keep the
-- scheduler's work proportional to the databases that have work.

-- Key/value state of the server itself: 'epoch' (the random mark this server last wrote to storage)
-- and 'clean' ('1' after a graceful shutdown, '0' while running).
CREATE TABLE server_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- When retention may next have something to remove (ms since the epoch); NULL: not known yet.
ALTER TABLE databases ADD COLUMN retention_due_at INTEGER;
CREATE INDEX databases_retention_due ON databases (retention_due_at);
-- The databases with transactions not yet in level 1.
CREATE INDEX databases_behind ON databases (id) WHERE txid > hwm;

-- Restore checks (lfsb.store.verify): one row per check of a database, scheduled or asked for
-- (`lfsb verify`); the newest few per database are kept.
CREATE TABLE restore_checks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    db_id       INTEGER NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    checked_at  INTEGER NOT NULL,   -- ms since the epoch, when the check ended
    txid        INTEGER NOT NULL,   -- the point checked (0: none could be planned from storage)
    duration_ms INTEGER NOT NULL,
    bytes_read  INTEGER NOT NULL,   -- bytes of LTX files read from object storage
    db_bytes    INTEGER NOT NULL,   -- size of the rebuilt SQLite file
    ok          INTEGER NOT NULL,   -- 1 passed, 0 failed
    message     TEXT NOT NULL,
    scheduled   INTEGER NOT NULL    -- 1 run by the schedule, 0 asked for
) STRICT;
CREATE INDEX restore_checks_by_db ON restore_checks (db_id, checked_at);

-- The scrub (lfsb.store.scrub): when each object in storage was last read back and verified, and why it
-- is unusable if it is (NULL: healthy). Snapshot plans route around corrupt objects. A re-upload of the
-- same range (a repair) replaces the row, so both are NULL again.
ALTER TABLE remote_files ADD COLUMN scrubbed_at INTEGER;
ALTER TABLE remote_files ADD COLUMN corrupt TEXT;

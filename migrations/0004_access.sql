-- Access control (design.md §8): tokens, the audit log, and soft-deleted databases.

-- A token is lfsb_<id>_<secret>; only the SHA-256 of the secret is kept. Rows are never removed
-- (a revoked or expired token stays listed), so "any token exists" is a lasting switch to token mode.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    cluster      TEXT NOT NULL,
    role         INTEGER NOT NULL,             -- 1 replica, 2 read, 3 admin (lfsb.store.access.Role)
    secret_hash  BLOB NOT NULL,
    note         TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,             -- ms since the epoch, like every time here
    expires_at   INTEGER,                      -- NULL: never
    revoked_at   INTEGER,                      -- NULL: valid
    last_used_at INTEGER                       -- written at most once a minute per token
) STRICT;

-- Every admin action, refused or done.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    time     INTEGER NOT NULL,
    token_id TEXT,                             -- "root" for LFSB_ADMIN_TOKEN, NULL in open mode
    remote   TEXT NOT NULL,
    action   TEXT NOT NULL,
    cluster  TEXT NOT NULL,
    database TEXT NOT NULL,
    outcome  TEXT NOT NULL,                    -- "ok" or the error code
    detail   TEXT NOT NULL
) STRICT;
CREATE INDEX audit_time ON audit (time);

-- A deleted database keeps its row, renamed to <name>@<deleted_at> (a name no client can use), with
-- its objects moved to that name's prefix. moved_from names the prefix whose objects are still to be
-- removed after a move (a crash between the copy and the removal is finished at the next start).
ALTER TABLE databases ADD COLUMN deleted_at INTEGER;
ALTER TABLE databases ADD COLUMN moved_from TEXT;

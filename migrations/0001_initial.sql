-- The metadata db: clusters, databases and their positions, current page checksums,
-- the local L0 files and the index of files in object storage.
-- TXIDs are stored as INTEGER (< 2^63, enforced on ingestion); checksums as INTEGER in their
-- two's-complement signed form (lfsb.store.db.to_sql / from_sql), timestamps as ms since the epoch.

CREATE TABLE clusters (
    name       TEXT PRIMARY KEY,
    cluster_id TEXT                        -- the pinned Litefs-Cluster-Id, NULL until first seen
) STRICT;

CREATE TABLE databases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster    TEXT NOT NULL,
    name       TEXT NOT NULL,
    page_size  INTEGER NOT NULL,
    "commit"   INTEGER NOT NULL,           -- size in pages at txid
    txid       INTEGER NOT NULL,           -- current position
    checksum   INTEGER NOT NULL,           -- post-apply checksum at txid
    timestamp  INTEGER NOT NULL,           -- LTX timestamp of txid
    hwm        INTEGER NOT NULL DEFAULT 0, -- every TXID <= hwm is durably in object storage
    UNIQUE (cluster, name)
) STRICT;

-- The checksum of every page of the current state (pgno 1..commit, lock page excluded).
CREATE TABLE pages (
    db_id    INTEGER NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    pgno     INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    PRIMARY KEY (db_id, pgno)
) STRICT, WITHOUT ROWID;

-- Level 0: LTX files as received, kept in <data>/l0/<cluster>/<db>/<min>-<max>.ltx.
CREATE TABLE l0_files (
    db_id               INTEGER NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    min_txid            INTEGER NOT NULL,
    max_txid            INTEGER NOT NULL,
    "commit"            INTEGER NOT NULL,
    timestamp           INTEGER NOT NULL,
    pre_apply_checksum  INTEGER NOT NULL,
    post_apply_checksum INTEGER NOT NULL,
    size                INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (db_id, min_txid)
) STRICT;

-- The index of files in object storage (levels 1.. and 9), kept in step with every upload and delete.
CREATE TABLE remote_files (
    db_id               INTEGER NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    level               INTEGER NOT NULL,
    min_txid            INTEGER NOT NULL,
    max_txid            INTEGER NOT NULL,
    "commit"            INTEGER NOT NULL,
    page_size           INTEGER NOT NULL,
    timestamp           INTEGER NOT NULL,
    pre_apply_checksum  INTEGER NOT NULL,
    post_apply_checksum INTEGER NOT NULL,
    size                INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (db_id, level, min_txid)
) STRICT;

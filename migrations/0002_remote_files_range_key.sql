-- Every snapshot (level 9) starts at TXID 1, so (level, min_txid) does not identify a remote file:
-- a new snapshot replaced the previous one's row and left that object unindexed (and so never
-- pruned). Key the index by the whole TXID range, as object keys are.

CREATE TABLE remote_files_new (
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
    PRIMARY KEY (db_id, level, min_txid, max_txid)
) STRICT;

INSERT INTO remote_files_new
    (db_id, level, min_txid, max_txid, "commit", page_size, timestamp, pre_apply_checksum,
     post_apply_checksum, size, created_at)
SELECT db_id, level, min_txid, max_txid, "commit", page_size, timestamp, pre_apply_checksum,
       post_apply_checksum, size, created_at
FROM remote_files;

DROP TABLE remote_files;
ALTER TABLE remote_files_new RENAME TO remote_files;

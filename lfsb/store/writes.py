"""The metadata writes other than ingestion's (:mod:`lfsb.store.ingest`): cluster IDs, the index of the
files in object storage, and recovery's replacement of a database.

Like every :meth:`MetaDB.write <lfsb.store.db.MetaDB.write>`, they run in the metadata writer process,
which imports this module (and little else) to find them by name.
"""

from __future__ import annotations

import sqlite3

from .db import to_sql
from .records import CHECK_COLUMNS, REMOTE_COLUMNS, CheckRecord, Database, LTXFile


def index_files(conn: sqlite3.Connection, db_id: int, page_size: int, files: list[LTXFile]) -> None:
    """Add files in object storage to the index of a database (replacing entries of the same range)."""
    conn.executemany(
        f"INSERT OR REPLACE INTO remote_files (db_id, {REMOTE_COLUMNS}, page_size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                db_id,
                f.level,
                f.min_txid,
                f.max_txid,
                f.commit,
                f.timestamp,
                to_sql(f.pre_apply_checksum),
                to_sql(f.post_apply_checksum),
                f.size,
                f.created_at,
                page_size,
            )
            for f in files
        ],
    )


def pin_cluster_id(conn: sqlite3.Connection, cluster: str, cluster_id: str) -> tuple[str, bool]:
    """The cluster ID pinned to ``cluster``, pinning ``cluster_id`` if there is none (then True)."""
    row = conn.execute("SELECT cluster_id FROM clusters WHERE name = ?", (cluster,)).fetchone()
    if row and row[0]:
        return row[0], False
    conn.execute(
        "INSERT INTO clusters (name, cluster_id) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET cluster_id = excluded.cluster_id",
        (cluster, cluster_id),
    )
    return cluster_id, True


def unpin_cluster_id(conn: sqlite3.Connection, cluster: str) -> str | None:
    """Forget the cluster ID pinned to ``cluster``; returns it."""
    row = conn.execute("SELECT cluster_id FROM clusters WHERE name = ?", (cluster,)).fetchone()
    conn.execute("UPDATE clusters SET cluster_id = NULL WHERE name = ?", (cluster,))
    return row[0] if row else None


def index_upload(conn: sqlite3.Connection, db: Database, f: LTXFile, raise_hwm: bool) -> bool:
    """Add an uploaded file to the index of ``db`` (and raise its HWM); False if the database is gone."""
    if not conn.execute("SELECT 1 FROM databases WHERE id = ?", (db.id,)).fetchone():
        return False
    index_files(conn, db.id, db.page_size, [f])
    if raise_hwm:
        conn.execute("UPDATE databases SET hwm = MAX(hwm, ?) WHERE id = ?", (f.max_txid, db.id))
    return True


def replace_database(
    conn: sqlite3.Connection,
    cluster: str,
    name: str,
    page_size: int,
    last: LTXFile,
    pages: list[tuple[int, int]],
    files: list[LTXFile],
    deleted_at: int | None,
) -> None:
    """Replace the rows of (cluster, name) with a database at ``last`` holding ``pages`` (number,
    checksum), indexed as ``files`` (deleted at ``deleted_at``, or live)."""
    conn.execute("DELETE FROM databases WHERE cluster = ? AND name = ?", (cluster, name))
    db_id = conn.execute(
        'INSERT INTO databases (cluster, name, page_size, "commit", txid, checksum, timestamp, hwm,'
        " deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cluster,
            name,
            page_size,
            last.commit,
            last.max_txid,
            to_sql(last.post_apply_checksum),
            last.timestamp,
            last.max_txid,
            deleted_at,
        ),
    ).lastrowid
    conn.executemany(
        "INSERT INTO pages (db_id, pgno, checksum) VALUES (?, ?, ?)",
        [(db_id, pgno, to_sql(c)) for pgno, c in pages],
    )
    index_files(conn, db_id, page_size, files)


def update_index(
    conn: sqlite3.Connection, db: Database, added: list[LTXFile], gone: list[tuple[int, int, int]]
) -> None:
    """Index the files ``added`` to storage and drop those ``gone`` (level, min, max TXID) from it."""
    index_files(conn, db.id, db.page_size, added)
    conn.executemany(
        "DELETE FROM remote_files WHERE db_id = ? AND level = ? AND min_txid = ? AND max_txid = ?",
        [(db.id, *key) for key in gone],
    )
    if added:
        top = max(f.max_txid for f in added if f.level == 1) if any(f.level == 1 for f in added) else 0
        conn.execute("UPDATE databases SET hwm = MAX(hwm, ?) WHERE id = ?", (min(top, db.txid), db.id))


CHECKS_KEPT = 100
"""Restore checks kept per database (older ones are dropped as new ones are recorded)."""


def record_check(conn: sqlite3.Connection, db_id: int, r: CheckRecord) -> bool:
    """Record a restore check of a database; False if the database is gone."""
    if not conn.execute("SELECT 1 FROM databases WHERE id = ?", (db_id,)).fetchone():
        return False
    conn.execute(
        f"INSERT INTO restore_checks (db_id, {CHECK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (db_id, r.checked_at, r.txid, r.duration_ms, r.bytes_read, r.db_bytes, r.ok, r.message, r.scheduled),
    )
    conn.execute(
        "DELETE FROM restore_checks WHERE db_id = ? AND id NOT IN"
        " (SELECT id FROM restore_checks WHERE db_id = ? ORDER BY id DESC LIMIT ?)",
        (db_id, db_id, CHECKS_KEPT),
    )
    return True

"""Ingestion (WriteTx): verify an incoming LTX file, check that it follows on, record it as L0.

Three steps, all three in the metadata writer process for a small body; a larger one is decoded and
verified by :func:`inspect` on a worker thread of the server before any lock is taken. In the writer,
:func:`append` runs the other two: :func:`place` creates the file at its L0 path, never over another
one, and :func:`record` checks the file against the current position and page checksums (upstream §3.4
semantics) and records it. The writer makes the placed files of a whole group durable at once, then
commits: the commit is what makes a placed file part of the database. A file without a row (its write
failed, or the server crashed first) is removed by the writer or at the next start.
"""

from __future__ import annotations

import io
import os
import sqlite3
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import Kind, LfsbError, bad_ltx, internal, pos_mismatch
from ..faults import crash_point
from ..ltx import (
    EMPTY_DB_CHECKSUM,
    FLAG,
    Decoder,
    Header,
    LTXError,
    Pos,
    PostApplyMismatch,
    Trailer,
    frame_checksum,
    timestamp_to_datetime,
)
from ..storage.local import make_dirs, remove_file, write_new
from .db import WriteConnection, from_sql, now_ms, to_sql
from .records import DATABASE_COLUMNS, Database

MAX_TXID = (1 << 63) - 1


@dataclass(frozen=True)
class Incoming:
    """A verified LTX file waiting to be recorded: its header, trailer and page checksums."""

    header: Header
    trailer: Trailer
    pgnos: array
    checksums: list[int]
    size: int


def inspect(f: BinaryIO, size: int, trusted: bool = False) -> Incoming:
    """Decode and verify the LTX file of ``size`` bytes that ``f`` reads.

    Stricter than the reference decoder where LiteFS never goes: page numbers must increase and
    stay within the commit, the lock page must be absent and a snapshot must hold every page.
    ``trusted`` (a file the store wrote itself: a restore's or an import's) skips the LZ4 token walk
    (see :class:`~lfsb.ltx.lz4frame.FrameReader`); every checksum is still verified.
    """
    pgnos: array = array("I")
    checksums: list[int] = []
    try:
        dec = Decoder(f, trusted=trusted)
        header = dec.read_header()
        if header.max_txid > MAX_TXID:
            raise bad_ltx(f"transaction id out of range: {header.max_txid}")
        timestamp_to_datetime(header.timestamp)  # LTXError outside years 1-9999 (unstorable)
        lock, commit, prev = header.lock_pgno, header.commit, 0
        for pgno, frame in dec.pages():
            if pgno <= prev:
                raise bad_ltx(f"out-of-order page numbers: {prev},{pgno}")
            if pgno > commit:
                raise bad_ltx(f"page number {pgno} out-of-bounds for commit size {commit}")
            if pgno == lock:
                raise bad_ltx(f"lock page must not be stored: pgno={pgno}")
            pgnos.append(pgno)
            checksums.append(frame_checksum(frame))
            prev = pgno
        trailer = dec.close()
        if not dec.at_end():
            raise bad_ltx("unexpected data after the trailer")
    except PostApplyMismatch as e:
        raise LfsbError(Kind.VALIDATION, "EBADCHECKSUM", str(e)) from None
    except LTXError as e:
        raise bad_ltx(str(e)) from None
    if header.is_snapshot:
        expected = commit - (1 if commit >= lock else 0)
        if len(pgnos) != expected:
            raise bad_ltx(f"snapshot must hold every page: expected {expected} pages, found {len(pgnos)}")
    return Incoming(header, trailer, pgnos, checksums, size)


def inspect_file(path: Path, trusted: bool = False) -> Incoming:
    """:func:`inspect` of the file at ``path`` (blocking; run it on a worker thread)."""
    with open(path, "rb") as f:
        return inspect(f, os.fstat(f.fileno()).st_size, trusted)


def find_database(conn: sqlite3.Connection, cluster: str, name: str) -> Database | None:
    """The database row of (cluster, name), if any."""
    row = conn.execute(
        f"SELECT {DATABASE_COLUMNS} FROM databases WHERE cluster = ? AND name = ?", (cluster, name)
    ).fetchone()
    return Database.from_row(row) if row else None


ROWS_PER_STATEMENT = 250
"""Page rows read or written by one SQL statement: few statements per write (each costs a trip through the
sqlite3 module), and none that returns an unbounded value."""


def _old_checksums(conn: sqlite3.Connection, db_id: int, pgnos: list[int]) -> dict[int, int]:
    """The stored checksums of ``pgnos`` (ascending), each statement returning its rows as one value."""
    found: dict[int, int] = {}
    select = "SELECT group_concat(pgno || ':' || checksum) FROM pages WHERE db_id = ? AND "
    for i in range(0, len(pgnos), ROWS_PER_STATEMENT):
        part = pgnos[i : i + ROWS_PER_STATEMENT]
        if part[-1] - part[0] + 1 <= 4 * len(part):  # dense: a range scan
            sql, params = select + "pgno BETWEEN ? AND ?", (db_id, part[0], part[-1])
        else:
            sql, params = select + f"pgno IN ({','.join('?' * len(part))})", (db_id, *part)
        (rows,) = conn.execute(sql, params).fetchone()
        for item in rows.split(",") if rows else ():
            pgno, _, checksum = item.partition(":")
            found[int(pgno)] = from_sql(int(checksum))
    return found


def _store_checksums(
    conn: sqlite3.Connection, db_id: int, pgnos: Sequence[int], checksums: list[int]
) -> None:
    """Insert or replace the checksums of ``pgnos``, many rows per statement."""
    for i in range(0, len(pgnos), ROWS_PER_STATEMENT):
        part = range(i, min(i + ROWS_PER_STATEMENT, len(pgnos)))
        params = [v for j in part for v in (db_id, pgnos[j], to_sql(checksums[j]))]
        conn.execute(
            f"INSERT INTO pages (db_id, pgno, checksum) VALUES {','.join(['(?, ?, ?)'] * len(part))}"
            " ON CONFLICT (db_id, pgno) DO UPDATE SET checksum = excluded.checksum",
            params,
        )


def l0_path(l0_root: Path, cluster: str, name: str, filename: str) -> Path:
    """Where an L0 file of (cluster, name) lives."""
    return l0_root.joinpath(cluster, name, filename)


def place(dest: Path, body: bytes | Path) -> bool:
    """Create the L0 file ``dest`` from ``body`` (the file's bytes, or an fsynced file on the same file
    system to link), not yet durable: the metadata writer syncs it before the commit that records it.

    An existing file is never replaced: False if ``dest`` exists, i.e. another request holds the
    same transactions or they are already recorded.
    """
    while True:
        try:
            if isinstance(body, Path):
                os.link(body, dest)
            else:
                write_new(dest, body)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            if dest.parent.is_dir():  # it is the body's file that is missing
                raise
            make_dirs(dest.parent)  # the database's first file


def refuse_case_twins(conn: sqlite3.Connection, cluster: str, name: str) -> None:
    """409 ``ENAMECONFLICT`` for a new database whose name, or whose cluster's name, differs only in case
    from an existing one: on a case-insensitive file system (macOS) the two would share a directory."""
    if conn.execute(
        "SELECT 1 FROM databases WHERE lower(cluster) = lower(?) AND cluster <> ? LIMIT 1", (cluster, cluster)
    ).fetchone():
        raise LfsbError(
            Kind.CONFLICT, "ENAMECONFLICT", "cluster name differs only in case from an existing cluster"
        )
    twin = conn.execute(
        "SELECT name FROM databases WHERE lower(cluster) = lower(?) AND lower(name) = lower(?) AND name <> ?"
        " LIMIT 1",
        (cluster, name, name),
    ).fetchone()
    if twin:
        raise LfsbError(
            Kind.CONFLICT,
            "ENAMECONFLICT",
            f"database name {name!r} differs only in case from the existing database {twin[0]!r}",
        )


def record(
    conn: sqlite3.Connection,
    db: Database | None,
    cluster: str,
    name: str,
    inc: Incoming,
    placed: bool,
    now: int,
) -> Database:
    """Check ``inc`` against the current state ``db`` of (cluster, name), None for a new database, and
    record it as L0 (metadata writer, one transaction).

    ``placed`` tells whether :func:`place` created the file; if it found one there, the request
    that holds those transactions wins and this one gets 409 ``EPOSMISMATCH``.
    """
    h, trailer = inc.header, inc.trailer
    pos = db.pos if db else Pos(0, 0)
    if db is not None and h.page_size != db.page_size:
        raise LfsbError(Kind.UNPROCESSABLE, "EBADHEADER", "page size mismatch")
    if Pos(h.min_txid - 1, h.pre_apply_checksum) != pos or not placed:
        raise pos_mismatch(pos)
    if db is None:
        db_id = conn.execute(
            'INSERT INTO databases (cluster, name, page_size, "commit", txid, checksum, timestamp)'
            " VALUES (?, ?, ?, 0, 0, ?, 0)",
            (cluster, name, h.page_size, to_sql(EMPTY_DB_CHECKSUM)),
        ).lastrowid
        old_commit, checksum = 0, EMPTY_DB_CHECKSUM
    else:
        db_id, old_commit, checksum = db.id, db.commit, db.checksum

    pgnos, checksums = inc.pgnos, inc.checksums
    n_old = next((i for i, p in enumerate(pgnos) if p > old_commit), len(pgnos))
    old = _old_checksums(conn, db_id, list(pgnos[:n_old]))
    for i in range(n_old):
        prev = old.get(pgnos[i])
        if prev is None:
            raise internal(f"page {pgnos[i]} of {cluster}/{name} is missing from the metadata db")
        checksum ^= prev ^ checksums[i]
    for i in range(n_old, len(pgnos)):
        checksum ^= checksums[i]
    new_commit = h.commit
    if new_commit < old_commit:
        dropped = conn.execute("SELECT checksum FROM pages WHERE db_id = ? AND pgno > ?", (db_id, new_commit))
        for (c,) in dropped:
            checksum ^= from_sql(c)
    elif new_commit > old_commit:
        lock = h.lock_pgno
        expected = new_commit - old_commit - (1 if old_commit < lock <= new_commit else 0)
        found = len(pgnos) - n_old
        if found != expected:
            raise LfsbError(
                Kind.VALIDATION,
                "EMISSINGPAGES",
                f"database extend without all pages, expected {expected} new pages, found {found} pages",
            )
    checksum |= FLAG
    if checksum != trailer.post_apply_checksum:
        raise LfsbError(
            Kind.VALIDATION,
            "EBADCHECKSUM",
            f"incorrect post-apply checksum of {trailer.post_apply_checksum:016x}, expected {checksum:016x}",
        )

    _store_checksums(conn, db_id, pgnos, checksums)
    if new_commit < old_commit:
        conn.execute("DELETE FROM pages WHERE db_id = ? AND pgno > ?", (db_id, new_commit))
    conn.execute(
        'UPDATE databases SET "commit" = ?, txid = ?, checksum = ?, timestamp = ? WHERE id = ?',
        (new_commit, h.max_txid, to_sql(checksum), h.timestamp, db_id),
    )
    conn.execute(
        "INSERT OR REPLACE INTO l0_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            db_id,
            h.min_txid,
            h.max_txid,
            new_commit,
            h.timestamp,
            to_sql(h.pre_apply_checksum),
            to_sql(checksum),
            inc.size,
            now,
        ),
    )
    crash_point("ingest.placed")
    hwm = db.hwm if db else 0
    return Database(db_id, cluster, name, h.page_size, new_commit, h.max_txid, checksum, h.timestamp, hwm)


def append(
    conn: WriteConnection, l0_root: Path, cluster: str, name: str, body: bytes | Path, inc: Incoming | None
) -> tuple[Database, Header]:
    """Place the L0 file of ``body`` and record it (a metadata write: the writer syncs the file with its
    group, before the commit); the file is removed again if it is not recorded. ``inc`` is the verified
    file, or None to verify ``body`` (bytes) here first. Returns the database after it, and the header."""
    if inc is None:
        assert isinstance(body, bytes)
        inc = inspect(io.BytesIO(body), len(body))
    db = find_database(conn, cluster, name)
    if db is None:
        refuse_case_twins(conn, cluster, name)  # before the new database's directory is made
    dest = l0_path(l0_root, cluster, name, inc.header.filename)
    placed = place(dest, body)
    try:
        db = record(conn, db, cluster, name, inc, placed, now_ms())
    except BaseException:
        if placed:
            remove_file(dest)
        raise
    conn.created(dest)
    return db, inc.header

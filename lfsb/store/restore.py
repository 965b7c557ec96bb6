"""Restore and import: make a past point, or an uploaded SQLite file, the database's new state.

Neither rewinds history. Both append one LTX file at TXID current+1 that holds only the pages
that differ from the current state (design.md §2), through the same ingestion path as LiteFS's
files; LiteFS then sees the backup ahead of it and pulls the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from ..errors import Kind, LfsbError, not_found_db
from ..faults import crash_point
from ..ltx import (
    EMPTY_DB_CHECKSUM,
    FLAG,
    FLAG_COMPRESS_LZ4,
    Decoder,
    Encoder,
    Header,
    LTXError,
    Pos,
    SQLiteHeader,
    decode_database,
    encode_database,
    frame_checksum,
    lock_pgno,
    read_sqlite_header,
)
from .db import from_sql, now_ms
from .ingest import find_database
from .plan import Point, point_at, point_before, tx_not_available
from .records import Database
from .store import Store

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 3
_PGNO = struct.Struct(">I")

Frames = Iterator[tuple[int, memoryview | bytes]]


def snapshot_frames(f: BinaryIO) -> tuple[Header, Frames]:
    """The header and page frames of an LTX snapshot (verified when the frames are exhausted).

    The snapshot is one the store wrote, from files verified when they came in (``trusted``)."""
    dec = Decoder(f, trusted=True)
    header = dec.read_header()

    def _frames() -> Frames:
        yield from dec.pages()
        dec.close()

    return header, _frames()


def sqlite_frames(f: BinaryIO, page_size: int, page_count: int) -> Frames:
    """The page frames of a raw SQLite file (the lock page skipped)."""
    lock = lock_pgno(page_size)
    for pgno in range(1, page_count + 1):
        data = f.read(page_size)
        if len(data) != page_size:
            raise LTXError(f"database file ends in page {pgno}")
        if pgno != lock:
            yield pgno, _PGNO.pack(pgno) + data


def write_diff(
    dest: Path,
    frames: Frames,
    page_size: int,
    commit: int,
    current: dict[int, int],
    pos: Pos,
    timestamp: int,
) -> Header:
    """Write the incremental LTX file (TXID ``pos.txid + 1``) that turns ``current`` into ``frames``."""
    txid = pos.txid + 1
    header = Header(
        page_size=page_size,
        commit=commit,
        min_txid=txid,
        max_txid=txid,
        flags=FLAG_COMPRESS_LZ4,
        timestamp=timestamp,
        pre_apply_checksum=pos.post_apply_checksum,
    )
    checksum = EMPTY_DB_CHECKSUM
    with open(dest, "wb") as out:
        enc = Encoder(out, header)
        for pgno, frame in frames:
            c = frame_checksum(frame)
            checksum ^= c
            if current.get(pgno) != c:
                enc.write_frame(pgno, frame)
        enc.close(FLAG | checksum)
        out.flush()
        os.fsync(out.fileno())  # acknowledged as L0 once recorded: it must be durable
    return header


async def append_state(
    store: Store,
    cluster: str,
    name: str,
    open_source: Callable[[], AbstractContextManager[tuple[int, int, Frames]]],
) -> Database:
    """Append the state ``open_source()`` yields ((page_size, commit, frames)) as TXID current+1.

    Retried when LiteFS moves the database on meanwhile (a position mismatch).
    """
    for attempt in range(APPEND_ATTEMPTS):

        def _current(conn) -> tuple[Database | None, dict[int, int]]:
            db = find_database(conn, cluster, name)
            if db is None:
                return None, {}
            rows = conn.execute("SELECT pgno, checksum FROM pages WHERE db_id = ?", (db.id,))
            return db, {pgno: from_sql(c) for pgno, c in rows}

        db, current = await store.meta.read(_current)
        if db is None:
            raise not_found_db()
        path = store.temp_path("append")

        def _write(db: Database = db, current: dict[int, int] = current, path: Path = path) -> None:
            with open_source() as (page_size, commit, frames):
                if page_size != db.page_size:
                    raise LfsbError(Kind.UNPROCESSABLE, "EBADHEADER", "page size mismatch")
                write_diff(path, frames, page_size, commit, current, db.pos, now_ms())

        try:
            await asyncio.to_thread(_write)
            crash_point("append.written")
            return await store.write_tx(cluster, name, path, trusted=True)  # written just above
        except LfsbError as e:
            if e.code != "EPOSMISMATCH" or attempt == APPEND_ATTEMPTS - 1:
                raise
        finally:
            path.unlink(missing_ok=True)
    raise AssertionError("unreachable")


class _SnapshotSource(AbstractContextManager):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tuple[int, int, Frames]:
        self.f = open(self.path, "rb")
        header, frames = snapshot_frames(self.f)
        return header.page_size, header.commit, frames

    def __exit__(self, *exc: object) -> None:
        self.f.close()


class _SQLiteSource(AbstractContextManager):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tuple[int, int, Frames]:
        self.f = open(self.path, "rb")
        header = read_sqlite_header(self.f, self.path.stat().st_size)
        self.f.seek(0)
        return header.page_size, header.page_count, sqlite_frames(self.f, header.page_size, header.page_count)

    def __exit__(self, *exc: object) -> None:
        self.f.close()


async def restore(store: Store, db: Database, txid: int) -> int:
    """Make the state at ``txid`` current; returns the new TXID (or the current one if equal)."""
    if txid > db.txid:
        raise tx_not_available()
    if txid == db.txid:
        return db.txid
    log.info("restoring cluster=%s database=%s txid=%016x", db.cluster, db.name, txid)
    snapshot = store.temp_path("restore")
    try:
        await store.build_snapshot(db, txid, snapshot, compress=False)  # read once, right here
        crash_point("restore.built")
        restored = await append_state(store, db.cluster, db.name, lambda: _SnapshotSource(snapshot))
    finally:
        snapshot.unlink(missing_ok=True)
    crash_point("restore.appended")
    log.info(
        "database restored cluster=%s database=%s target=%016x txid=%016x",
        db.cluster,
        db.name,
        txid,
        restored.txid,
    )
    return restored.txid


async def resolve_point(store: Store, db: Database, txid: int, ts: int | None) -> Point:
    """The restorable point a txid (0: the current state) or timestamp names (ENOTXID / ENOTIMESTAMP)."""
    files = await store.files(db)
    if ts is not None:
        return point_before(files, ts)
    return point_at(files, txid or db.txid)


async def restore_point(
    store: Store, cluster: str, name: str, txid: int, ts: int | None
) -> tuple[Point, int]:
    """Restore a database to the point a txid or timestamp names: (that point, the new TXID)."""
    async with store.locks(cluster, name).work:
        db = await store.database(cluster, name)
        point = await resolve_point(store, db, txid, ts)
        return point, await restore(store, db, point.txid)


@contextlib.asynccontextmanager
async def open_export(store: Store, db: Database, target: int, sqlite: bool) -> AsyncIterator[BinaryIO]:
    """An open handle on ``db`` at TXID ``target``: an LTX snapshot, or with ``sqlite`` the SQLite file.

    Admitted by :meth:`Store.export_slot`; the temp files are removed when the context ends."""
    # About the database's size (its current one; a past point's may differ, the reserve is the slack):
    # for sqlite, a snapshot, then the database decoded from it.
    size = db.commit * db.page_size
    async with store.export_slot(2 * size if sqlite else size):
        if target == db.txid and not sqlite:
            with await store.current_snapshot(db) as f:  # built once per TXID
                yield f
            return
        snapshot = store.temp_path("snapshot")
        raw = store.temp_path("export")
        try:
            if target == db.txid:
                source = await store.current_snapshot(db)
            else:
                await store.build_snapshot(db, target, snapshot, compress=not sqlite)
                source = await asyncio.to_thread(open, snapshot, "rb")
            if sqlite:

                def _decode() -> None:
                    with source, open(raw, "wb") as out:
                        decode_database(source, out)

                await asyncio.to_thread(_decode)
                snapshot.unlink(missing_ok=True)  # its space is free while the export streams
                source = await asyncio.to_thread(open, raw, "rb")
            with source:
                yield source
        finally:
            snapshot.unlink(missing_ok=True)
            raw.unlink(missing_ok=True)


def check_sqlite_file(path: Path) -> SQLiteHeader:
    """Page size and page count of an uploaded SQLite file; 422 ``EBADHEADER`` if it is not one."""
    try:
        with open(path, "rb") as f:
            header = read_sqlite_header(f, path.stat().st_size)
    except LTXError as e:
        raise LfsbError(Kind.UNPROCESSABLE, "EBADHEADER", str(e)) from None
    if header.page_count == 0:
        raise LfsbError(Kind.UNPROCESSABLE, "EBADHEADER", "invalid database header: empty database")
    return header


async def import_database(store: Store, cluster: str, name: str, path: Path) -> Database:
    """Make the raw SQLite file at ``path`` the database's new state (a new database starts at TXID 1)."""
    await asyncio.to_thread(check_sqlite_file, path)
    existing = await store.meta.read(lambda c: find_database(c, cluster, name))
    if existing is None:
        snapshot = store.temp_path("import")
        try:

            def _encode() -> None:
                with open(path, "rb") as src, open(snapshot, "wb") as out:
                    encode_database(src, out, timestamp=now_ms())
                    out.flush()
                    os.fsync(out.fileno())

            await asyncio.to_thread(_encode)
            db = await store.write_tx(cluster, name, snapshot, trusted=True)  # encoded just above
        finally:
            snapshot.unlink(missing_ok=True)
    else:
        db = await append_state(store, cluster, name, lambda: _SQLiteSource(path))
    crash_point("import.appended")
    log.info("database imported cluster=%s database=%s txid=%016x", cluster, name, db.txid)
    return db

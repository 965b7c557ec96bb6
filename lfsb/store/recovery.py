"""Recovery from object storage at start: the file index, positions and HWM rebuilt from a bucket.

For every database in storage: when the metadata db has no row for it, or is behind storage,
its local state is rebuilt from the bucket (the index from a listing plus each file's metadata,
the position from the newest file, the page checksums from a snapshot at that position).
Otherwise the index is reconciled with the listing (files uploaded just before a crash are
added; entries whose objects are gone are dropped). A fresh data directory pointed at a bucket
written by us or by the Go server therefore just works (design.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3

from ..faults import crash_point
from ..ltx import Decoder, frame_checksum
from ..storage import FileInfo
from .db import now_ms
from .deletion import finish_moves, leftover_of_delete, parse_deleted_name
from .ingest import find_database
from .plan import snapshot_plan
from .records import DATABASE_COLUMNS, Database, LTXFile
from .store import Store, compact_files
from .writes import replace_database, update_index

log = logging.getLogger(__name__)

METADATA_CONCURRENCY = 32


async def _describe(store: Store, infos: list[FileInfo]) -> list[LTXFile]:
    """Index entries for listed files (one metadata request each, 32 at a time)."""
    sem = asyncio.Semaphore(METADATA_CONCURRENCY)

    async def _one(info: FileInfo) -> LTXFile:
        async with sem:
            meta = await store.objects.metadata(info)
        return LTXFile(
            info.level,
            info.min_txid,
            info.max_txid,
            meta.commit,
            meta.timestamp,
            meta.pre_apply_checksum,
            meta.post_apply_checksum,
            info.size,
            int(info.created_at.timestamp() * 1000),
        )

    return list(await asyncio.gather(*(_one(i) for i in infos)))


async def _list_all(store: Store, cluster: str, name: str) -> list[FileInfo]:
    infos: list[FileInfo] = []
    for level in await store.objects.list_levels(cluster, name):
        if level > 0:
            infos += await store.objects.list_files(cluster, name, level)
    return infos


async def _rebuild(store: Store, cluster: str, name: str, infos: list[FileInfo]) -> None:
    """Replace the local state of (cluster, name) with what storage holds."""
    files = await _describe(store, infos)
    last = max(files, key=lambda f: (f.max_txid, f.level))
    page_size = (await store.objects.metadata(infos[files.index(last)])).page_size
    placeholder = Database(0, cluster, name, page_size, last.commit, last.max_txid, 0, 0, 0)
    plan = snapshot_plan(files, last.max_txid)
    snapshot = store.temp_path("recover")
    try:
        async with store.open_files(placeholder, plan) as handles:
            await asyncio.to_thread(compact_files, handles, snapshot, False, store.tmp_dir)

        def _page_checksums() -> list[tuple[int, int]]:
            with open(snapshot, "rb") as f:
                dec = Decoder(f)
                dec.read_header()
                pages = [(pgno, frame_checksum(frame)) for pgno, frame in dec.pages()]
                dec.close()
            return pages

        pages = await asyncio.to_thread(_page_checksums)
    finally:
        snapshot.unlink(missing_ok=True)

    # Commit first: a crash before the L0 files are gone leaves unreferenced files (removed at the
    # next start), never rows that refer to deleted files.
    async with store.locks(cluster, name).files:
        deleted_at = parsed[1] if (parsed := parse_deleted_name(name)) else None
        await store.meta.write(replace_database, cluster, name, page_size, last, pages, files, deleted_at)
        crash_point("recovery.rebuilt")
        await asyncio.to_thread(shutil.rmtree, store.l0_dir / cluster / name, True)
    log.info(
        "database recovered from storage cluster=%s database=%s txid=%016x files=%d",
        cluster,
        name,
        last.max_txid,
        len(files),
    )


async def _reconcile(store: Store, db: Database, infos: list[FileInfo]) -> None:
    """Bring the index of ``db`` in line with the listing ``infos``."""
    indexed = {(f.level, f.min_txid, f.max_txid) for f in await store.files(db, corrupt=True) if f.level > 0}
    listed = {(i.level, i.min_txid, i.max_txid): i for i in infos}
    missing = [info for key, info in listed.items() if key not in indexed]
    gone = [key for key in indexed if key not in listed]
    if not missing and not gone:
        return
    added = await _describe(store, missing)

    crash_point("recovery.reconcile")
    await store.meta.write(update_index, db, added, gone)
    log.info(
        "index reconciled with storage cluster=%s database=%s added=%d dropped=%d",
        db.cluster,
        db.name,
        len(added),
        len(gone),
    )


async def _recover_database(store: Store, cluster: str, name: str) -> bool:
    """Rebuild or reconcile one database; False when storage holds no file of it."""
    infos = await _list_all(store, cluster, name)
    if not infos:
        return False
    local = await store.meta.read(lambda c: find_database(c, cluster, name))
    if local is None and await leftover_of_delete(store, cluster, name, infos):
        return False
    if local is None or local.txid < max(i.max_txid for i in infos):
        await _rebuild(store, cluster, name, infos)
    else:
        await _reconcile(store, local, infos)
    return True


def _indexed_databases(conn: sqlite3.Connection) -> list[Database]:
    """The databases that have entries in the index of remote files."""
    query = f"SELECT {DATABASE_COLUMNS} FROM databases WHERE id IN (SELECT db_id FROM remote_files)"
    return [Database.from_row(r) for r in conn.execute(query)]


async def recover(store: Store) -> None:
    """Rebuild or reconcile the local state of every database found in storage, and drop the index
    entries of databases with nothing left in storage. A database that cannot be recovered (say, its
    files in storage do not start with a snapshot) is logged and left as it is; the others go on."""
    started = now_ms()
    await finish_moves(store)
    count = 0
    listed: set[tuple[str, str]] = set()
    for cluster in await store.objects.list_clusters():
        for name in await store.objects.list_databases(cluster):
            listed.add((cluster, name))
            try:
                count += await _recover_database(store, cluster, name)
            except Exception:
                log.exception("cannot recover database from storage cluster=%s database=%s", cluster, name)
    for db in await store.meta.read(_indexed_databases):
        if (db.cluster, db.name) not in listed:
            await _reconcile(store, db, [])
    log.info("storage scanned databases=%d ms=%d", count, now_ms() - started)

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
import secrets
import shutil
import sqlite3

from ..errors import Kind, LfsbError
from ..faults import crash_point
from ..ltx import Decoder, frame_checksum
from ..storage import FileInfo
from .db import now_ms
from .deletion import copies_by_name, finish_moves, leftover_of_delete, parse_deleted_name
from .ingest import find_database
from .plan import snapshot_plan
from .records import DATABASE_COLUMNS, Database, LTXFile
from .store import Store, compact_files
from .writes import replace_database, update_index

log = logging.getLogger(__name__)

METADATA_CONCURRENCY = 32
RECOVERY_CONCURRENCY = 16
"""Databases recovered at once."""


async def _describe(store: Store, infos: list[FileInfo]) -> list[tuple[LTXFile, int]]:
    """Index entries for listed files, each with its page size (one metadata request each, 32 at a
    time)."""
    sem = asyncio.Semaphore(METADATA_CONCURRENCY)

    async def _one(info: FileInfo) -> tuple[LTXFile, int]:
        async with sem:
            meta = await store.objects.metadata(info)
        entry = LTXFile(
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
        return entry, meta.page_size

    return list(await asyncio.gather(*(_one(i) for i in infos)))


async def _rebuild(store: Store, cluster: str, name: str, infos: list[FileInfo]) -> None:
    """Replace the local state of (cluster, name) with what storage holds."""
    described = await _describe(store, infos)
    files = [f for f, _ in described]
    last, page_size = max(described, key=lambda d: (d[0].max_txid, d[0].level))
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
    added = [f for f, _ in await _describe(store, missing)]

    crash_point("recovery.reconcile")
    await store.meta.write(update_index, db, added, gone)
    log.info(
        "index reconciled with storage cluster=%s database=%s added=%d dropped=%d",
        db.cluster,
        db.name,
        len(added),
        len(gone),
    )


async def _recover_database(
    store: Store, cluster: str, name: str, listing: dict[str, list[FileInfo]], copies: dict[str, list[str]]
) -> bool:
    """Rebuild or reconcile one database from its files in ``listing`` (its cluster's, level 0 never
    in storage; ``copies``: its deleted copies by name); False when it is not recovered as a live or
    deleted database."""
    infos = [i for i in listing[name] if i.level > 0]
    if not infos:
        return False
    local = await store.meta.read(lambda c: find_database(c, cluster, name))
    if local is None and await leftover_of_delete(store, cluster, name, listing, copies.get(name, [])):
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


class Readiness:
    """While the server recovers at start, which clusters are not served yet (a request for one gets 503
    ``ERECOVERING`` with ``Retry-After``: its positions may still be behind storage) and how far it got.
    Until the clusters to recover are known, none is served."""

    def __init__(self) -> None:
        self.pending: set[str] | None = None
        """The clusters not recovered yet; None: not known yet (every cluster waits)."""
        self.recovering = True
        self.databases = 0
        """Databases recovered so far."""
        self.clusters_total = 0

    def start(self, clusters: set[str]) -> None:
        """Recovery of ``clusters`` begins: none of them is served until it is done; others are."""
        self.pending = set(clusters)
        self.clusters_total = len(clusters)

    def ready(self, cluster: str) -> None:
        """Every database of ``cluster`` is recovered."""
        if self.pending is not None:
            self.pending.discard(cluster)

    def finish(self) -> None:
        """The recovery is over."""
        self.pending = set()
        self.recovering = False

    def check_started(self) -> None:
        """503 ``ESTARTING`` until the data directory is open and the clusters to recover are known."""
        if self.pending is None:
            raise LfsbError(Kind.UNAVAILABLE, "ESTARTING", "the server is starting: retry in a few seconds")

    def check(self, cluster: str) -> None:
        """503 ``ERECOVERING`` while ``cluster`` is being recovered."""
        if self.pending is not None and cluster in self.pending:
            raise LfsbError(
                Kind.UNAVAILABLE,
                "ERECOVERING",
                "the server is recovering this cluster from object storage: retry in a few seconds",
            )

    def progress(self) -> dict[str, int]:
        """Counts for ``/healthz`` (never names)."""
        pending = len(self.pending) if self.pending is not None else self.clusters_total
        return {
            "clusters": self.clusters_total - pending,
            "clustersTotal": self.clusters_total,
            "databases": self.databases,
        }


# -- whether storage changed while the server was down ---------------------------------------------
EPOCH_MARKER = "epoch"


def _server_state(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM server_state").fetchall())


def set_server_state(conn: sqlite3.Connection, values: dict[str, str]) -> None:
    """Write ``server_state`` keys (a metadata write)."""
    conn.executemany("INSERT OR REPLACE INTO server_state (key, value) VALUES (?, ?)", list(values.items()))


async def begin_run(store: Store) -> bool:
    """Mark this run (a new epoch, in the metadata db first, then in storage); whether storage is as the
    last run left it: that run stopped gracefully and no other server has written its mark since. Only
    then can a restart skip the listing of all of storage."""
    state = await store.meta.read(_server_state)
    mark = await store.objects.read_marker(EPOCH_MARKER)
    unchanged = state.get("clean") == "1" and mark is not None and mark == state.get("epoch")
    epoch = secrets.token_hex(16)
    await store.meta.write(set_server_state, {"epoch": epoch, "clean": "0"})
    await store.objects.write_marker(EPOCH_MARKER, epoch)
    return unchanged


async def end_run(store: Store) -> None:
    """After a graceful stop with nothing left running: the metadata db matches storage."""
    await store.meta.write(set_server_state, {"clean": "1"})


async def recover(store: Store, readiness: Readiness, full: bool) -> None:
    """Rebuild or reconcile the local state of every database found in storage, and drop the index
    entries of databases with nothing left in storage; with ``full`` False (storage unchanged since a
    graceful stop) only interrupted moves are finished. Clusters are listed in one request per 1,000
    files and recovered one after another, 16 databases at a time; each is served once done. A database
    that cannot be recovered (say, its files in storage do not start with a snapshot) is logged and left
    as it is; the others go on."""
    started = now_ms()
    await finish_moves(store)
    if not full:
        log.info("storage unchanged since the last graceful stop: nothing to recover")
        return
    indexed = await store.meta.read(_indexed_databases)
    clusters = set(await store.objects.list_clusters())
    readiness.start(clusters | {db.cluster for db in indexed})
    sem = asyncio.Semaphore(RECOVERY_CONCURRENCY)
    for cluster in sorted(readiness.pending or ()):
        listing = await store.objects.list_cluster(cluster) if cluster in clusters else {}
        copies = copies_by_name(listing)  # once per cluster, not once per database

        async def _one(
            name: str, cluster: str = cluster, listing: dict = listing, copies: dict = copies
        ) -> None:
            async with sem:
                try:
                    recovered = await _recover_database(store, cluster, name, listing, copies)
                except Exception:
                    log.exception(
                        "cannot recover database from storage cluster=%s database=%s", cluster, name
                    )
                else:  # not `+= await`: that reads the count before the await, losing the others' updates
                    readiness.databases += recovered

        await asyncio.gather(*(_one(name) for name in sorted(listing)))
        for db in indexed:
            if db.cluster == cluster and db.name not in listing:
                await _reconcile(store, db, [])
        readiness.ready(cluster)
    log.info(
        "storage scanned clusters=%d databases=%d ms=%d",
        readiness.clusters_total,
        readiness.databases,
        now_ms() - started,
    )

"""The store: databases, positions, ingestion, snapshots at any point, and the files behind them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..config import Config
from ..errors import Kind, LfsbError, busy, not_found_db
from ..faults import crash_point
from ..ltx import Header, Pos, Trailer, compact, parse_filename
from ..observability import CountingObjectStore, Metrics
from ..storage import FileInfo, NotFound, ObjectStore
from ..storage.local import FileSystemSync, make_dirs
from .access import Access
from .db import MetaDB, execute, executemany, from_sql
from .ingest import Incoming, append, find_database, inspect, inspect_file, l0_path
from .plan import snapshot_plan
from .records import (
    CHECK_COLUMNS,
    L0,
    L0_COLUMNS,
    REMOTE_COLUMNS,
    CheckRecord,
    Database,
    LTXFile,
    check_from_row,
    l0_from_row,
    remote_from_row,
)
from .writes import index_upload, pin_cluster_id, record_check, unpin_cluster_id

log = logging.getLogger(__name__)

MAX_COMPACT_INPUTS = 256
"""Most files merged in one pass; longer plans are merged in several passes."""
DOWNLOAD_CONCURRENCY = 8
PLAN_ATTEMPTS = 3
SNAPSHOT_CACHE_BYTES = 512 * 1024 * 1024
"""Most bytes of current-state snapshots kept for a repeated request (:class:`SnapshotCache`)."""
INLINE_INSPECT_BYTES = 64 * 1024
"""Bodies up to this size are verified by the metadata writer (well under a millisecond), larger ones on a
worker thread here, so that none holds up a group commit for long."""


class SnapshotCache:
    """The last snapshot of the current state built for each database (by id), kept on disk so that
    asking again for the same TXID costs one file read: what LiteFS pulls after a restore, and exports
    of the current state. A (database id, TXID) names one content for good (a database re-created
    gets a new id), so an entry is never stale, only superseded. At most ``limit`` bytes are kept; the
    least recently used entries go first."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        self._entries: collections.OrderedDict[int, tuple[int, Path, int]] = collections.OrderedDict()
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._mutex = threading.Lock()  # the methods below run on worker threads

    def lock(self, db_id: int) -> asyncio.Lock:
        """Held while one database's entry is looked up or built (one build per TXID). Kept weakly: it lives
        while someone holds or waits on it."""
        if (lock := self._locks.get(db_id)) is None:
            lock = self._locks[db_id] = asyncio.Lock()
        return lock

    def open(self, db_id: int, txid: int | None = None) -> tuple[int, BinaryIO] | None:
        """The TXID of the entry of ``db_id`` and an open handle on it, if there is one (at ``txid``, when
        given) (worker thread)."""
        with self._mutex:
            entry = self._entries.get(db_id)
            if entry is None or (txid is not None and entry[0] != txid):
                return None
            self._entries.move_to_end(db_id)
            return entry[0], open(entry[1], "rb")

    def put(self, db_id: int, txid: int, built: Path) -> BinaryIO:
        """Keep the snapshot file ``built`` as the entry of ``db_id`` and open it (worker thread). The
        cache takes at most an eighth of the free space too: a file larger than that is not kept."""
        f = open(built, "rb")  # noqa: SIM115 - the caller closes it; readable after any unlink
        size = os.fstat(f.fileno()).st_size
        limit = min(self.limit, shutil.disk_usage(self.root).free // 8)
        with self._mutex:
            self._forget(db_id)
            if size > limit:
                built.unlink()
                return f
            path = self.root / f"{db_id}-{txid:016x}.ltx"
            built.replace(path)
            self._entries[db_id] = (txid, path, size)
            while sum(size for _, _, size in self._entries.values()) > limit:
                _, (_, old, _) = self._entries.popitem(last=False)
                old.unlink(missing_ok=True)
        return f

    def clear(self) -> None:
        """Give back all the space the cache takes (worker thread)."""
        with self._mutex:
            for db_id in list(self._entries):
                self._forget(db_id)

    def drop(self, db_id: int) -> None:
        """Forget the entry of ``db_id`` (worker thread)."""
        with self._mutex:
            self._forget(db_id)

    def _forget(self, db_id: int) -> None:
        if (entry := self._entries.pop(db_id, None)) is not None:
            entry[1].unlink(missing_ok=True)


class _DatabaseLocks:
    """Per-database locks: ``work`` serialises compactions, restores and deletes; ``files`` guards
    planning and opening files against their deletion.

    The store keeps them weakly, and each lock refers back to its pair: a pair lives exactly as long as
    someone holds it, one of its locks, or waits on one (so everyone working on a database shares the
    same pair), and a database nobody works on costs no memory (100,000 databases)."""

    def __init__(self) -> None:
        self.work = _PairedLock(self)
        self.files = _PairedLock(self)


class _PairedLock(asyncio.Lock):
    """An asyncio lock that keeps its :class:`_DatabaseLocks` alive."""

    def __init__(self, pair: _DatabaseLocks) -> None:
        super().__init__()
        self.pair = pair


def list_files(conn: sqlite3.Connection, db_id: int, corrupt: bool = False) -> list[LTXFile]:
    """Every L0 and remote file of a database; remote files the scrub found corrupt only with ``corrupt``."""
    files = [
        l0_from_row(r) for r in conn.execute(f"SELECT {L0_COLUMNS} FROM l0_files WHERE db_id = ?", (db_id,))
    ]
    healthy = "" if corrupt else " AND corrupt IS NULL"
    files += [
        remote_from_row(r)
        for r in conn.execute(f"SELECT {REMOTE_COLUMNS} FROM remote_files WHERE db_id = ?{healthy}", (db_id,))
    ]
    return files


def compact_stream(
    inputs: list[BinaryIO], out: BinaryIO, compress: bool, tmp_dir: Path, checksums: bool = False
) -> tuple[Header, Trailer]:
    """Merge ``inputs`` (contiguous, oldest first) into ``out``, in passes of at most 256 files (the
    partial merges go to temp files). Inputs are lfsb's own files, decoded as trusted: ``checksums``
    still verifies their LZ4 content checksums and snapshot page sums (a restore check does; a
    restore or an export relies on the LTX file checksums)."""
    with contextlib.ExitStack() as partials:
        while len(inputs) > MAX_COMPACT_INPUTS:
            partial = partials.enter_context(tempfile.TemporaryFile(dir=tmp_dir))
            compact(inputs[:MAX_COMPACT_INPUTS], partial, compress=False, trusted=True, checksums=checksums)
            partial.seek(0)
            inputs = [partial, *inputs[MAX_COMPACT_INPUTS:]]
        return compact(inputs, out, compress=compress, trusted=True, checksums=checksums)


def compact_files(
    inputs: list[BinaryIO], dest: Path, compress: bool, tmp_dir: Path
) -> tuple[Header, Trailer]:
    """Merge ``inputs`` (contiguous, oldest first) into the file ``dest`` (see :func:`compact_stream`)."""
    with open(dest, "wb") as out:
        return compact_stream(inputs, out, compress, tmp_dir)


class Store:
    """All state of the server: the metadata db, L0 files on disk and the object store."""

    def __init__(self, config: Config, objects: ObjectStore, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.objects: ObjectStore = CountingObjectStore(objects, self.metrics)  # type: ignore[assignment]
        self.data_path = config.data_path
        self.tmp_dir = self.data_path / "tmp"
        self.l0_dir = self.data_path / "l0"
        self.snapshots = SnapshotCache(self.data_path / "snapshots", SNAPSHOT_CACHE_BYTES)
        self.meta = MetaDB(self.data_path / "server.db", sync_files=FileSystemSync(self.l0_dir))
        self._locks: weakref.WeakValueDictionary[tuple[str, str], _DatabaseLocks] = (
            weakref.WeakValueDictionary()
        )
        self.access = Access(
            self.meta, config.auth, config.admin_token, config.loopback, self.metrics.auth_failures
        )
        self._cluster_ids: dict[str, str | None] = {}
        self._exports = 0
        self._export_bytes = 0  # temp space the running exports may still take

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the data directory layout, open the metadata db and drop leftovers of a crash."""

        def _prepare() -> None:
            make_dirs(self.data_path)
            for scratch in (self.tmp_dir, self.snapshots.root):
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir()
            make_dirs(self.l0_dir)

        await asyncio.to_thread(_prepare)
        await self.meta.open()
        await self.access.open()
        self.metrics.add_state_collector(self.meta.path)
        await self._remove_unreferenced_l0()

    async def close(self) -> None:
        """Finish the writes under way and close the metadata db."""
        await self.meta.close()

    def temp_path(self, prefix: str) -> Path:
        """A fresh path in the temp directory (removed at every start)."""
        return self.tmp_dir / f"{prefix}-{uuid.uuid4().hex}.ltx"

    @contextlib.asynccontextmanager
    async def export_slot(self, need: int) -> AsyncIterator[None]:
        """Admit one export that takes up to ``need`` bytes of temp space, or refuse it with 503 ``EBUSY``
        (the client retries after ``Retry-After``) while ``LFSB_MAX_EXPORTS`` are running, or when the
        free space left for ingestion would drop below ``LFSB_DISK_RESERVE``."""
        if self._exports >= self.config.max_exports:
            raise busy(f"{self._exports} exports are running, the most allowed (LFSB_MAX_EXPORTS)")
        free = (await asyncio.to_thread(shutil.disk_usage, self.tmp_dir)).free
        if free - self._export_bytes - need < self.config.disk_reserve:
            await asyncio.to_thread(self.snapshots.clear)  # kept snapshots give their space first
            free = (await asyncio.to_thread(shutil.disk_usage, self.tmp_dir)).free
        if free - self._export_bytes - need < self.config.disk_reserve:
            raise busy("not enough free space in the data directory for this export now (LFSB_DISK_RESERVE)")
        self._exports += 1
        self._export_bytes += need
        try:
            yield
        finally:
            self._exports -= 1
            self._export_bytes -= need

    def locks(self, cluster: str, name: str) -> _DatabaseLocks:
        """The locks of one database."""
        if (pair := self._locks.get((cluster, name))) is None:
            pair = self._locks[(cluster, name)] = _DatabaseLocks()
        return pair

    async def _remove_unreferenced_l0(self) -> None:
        """Remove L0 files that no row refers to (a crash between placing and commit), and directories
        left empty (a database whose first file was refused)."""
        known = await self.meta.read(
            lambda c: {
                (cluster, name, mn)
                for cluster, name, mn in c.execute(
                    "SELECT d.cluster, d.name, f.min_txid FROM l0_files f JOIN databases d ON d.id = f.db_id"
                )
            }
        )

        def _scan() -> int:
            removed = 0
            for path in self.l0_dir.glob("*/*/*"):
                try:
                    min_txid, _ = parse_filename(path.name)
                except Exception:
                    min_txid = None
                if (path.parent.parent.name, path.parent.name, min_txid) not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
            for directory in [*self.l0_dir.glob("*/*"), *self.l0_dir.glob("*")]:
                with contextlib.suppress(OSError):  # not empty
                    directory.rmdir()
            return removed

        if removed := await asyncio.to_thread(_scan):
            log.info("removed unreferenced L0 files count=%d", removed)

    # -- clusters and databases -----------------------------------------------------------------
    async def check_cluster_id(self, cluster: str, cluster_id: str) -> None:
        """Pin the first cluster ID seen for ``cluster``; another ID is a 422 ``ECLUSTERID``."""
        pinned = self._cluster_ids.get(cluster)
        if pinned is None:
            pinned, new = await self.meta.write(pin_cluster_id, cluster, cluster_id)
            self._cluster_ids[cluster] = pinned
            if new:
                log.info("cluster id pinned cluster=%s cluster_id=%s", cluster, cluster_id)
        if pinned != cluster_id:
            # The pinned ID is never echoed: whoever can read it could pose as that LiteFS cluster.
            raise LfsbError(
                Kind.UNPROCESSABLE,
                "ECLUSTERID",
                f"cluster {cluster!r} is pinned to another LiteFS cluster ID"
                " (run `lfsb cluster reset-id` if the cluster was re-created)",
            )

    async def pinned_cluster_id(self, cluster: str) -> str | None:
        """The LiteFS cluster ID pinned to ``cluster``, if any (cached: only this server pins)."""
        if cluster not in self._cluster_ids:
            row = await self.meta.read(
                lambda c: c.execute("SELECT cluster_id FROM clusters WHERE name = ?", (cluster,)).fetchone()
            )
            self._cluster_ids[cluster] = row[0] if row else None
        return self._cluster_ids[cluster]

    async def reset_cluster_id(self, cluster: str) -> bool:
        """Forget the pinned cluster ID; whether one was pinned (the ID itself is never returned)."""
        previous = await self.meta.write(unpin_cluster_id, cluster)
        self._cluster_ids.pop(cluster, None)
        if previous is not None:
            log.info("cluster id unpinned cluster=%s", cluster)
        return previous is not None

    async def positions(self, cluster: str) -> dict[str, Pos]:
        """The position of every database of a cluster, by name (``GET /pos``: only the columns it needs)."""
        rows = await self.meta.read(
            lambda c: c.execute(
                "SELECT name, txid, checksum FROM databases WHERE cluster = ? AND deleted_at IS NULL"
                " ORDER BY name",
                (cluster,),
            ).fetchall()
        )
        return {name: Pos(txid, from_sql(checksum)) for name, txid, checksum in rows}

    async def database(self, cluster: str, name: str) -> Database:
        """One database; 404 ``ENODB`` if there is none."""
        db = await self.meta.read(lambda c: find_database(c, cluster, name))
        if db is None:
            raise not_found_db()
        return db

    async def files(self, db: Database, corrupt: bool = False) -> list[LTXFile]:
        """Every L0 and remote file of a database (those found corrupt only with ``corrupt``: plans route
        around them)."""
        return await self.meta.read(lambda c: list_files(c, db.id, corrupt))

    # -- restore checks -------------------------------------------------------------------------
    async def record_check(self, db: Database, record: CheckRecord) -> bool:
        """Record a restore check of ``db``; False if the database is gone."""
        return await self.meta.write(record_check, db.id, record)

    async def checks(self, db: Database, limit: int = 10) -> list[CheckRecord]:
        """The newest restore checks of ``db``, newest first."""
        return await self.meta.read(
            lambda c: [
                check_from_row(r)
                for r in c.execute(
                    f"SELECT {CHECK_COLUMNS} FROM restore_checks WHERE db_id = ? ORDER BY id DESC LIMIT ?",
                    (db.id, limit),
                )
            ]
        )

    async def last_checks(self, cluster: str) -> dict[str, CheckRecord]:
        """The newest restore check of every database of ``cluster`` that has one, by database name."""
        query = (
            f"SELECT d.name, {', '.join('r.' + c for c in CHECK_COLUMNS.split(', '))}"
            " FROM databases d JOIN restore_checks r ON r.id ="
            " (SELECT MAX(id) FROM restore_checks WHERE db_id = d.id) WHERE d.cluster = ? ORDER BY d.name"
        )
        rows = await self.meta.read(lambda c: c.execute(query, (cluster,)).fetchall())
        return {row[0]: check_from_row(row[1:]) for row in rows}

    # -- ingestion ------------------------------------------------------------------------------
    async def write_tx(self, cluster: str, name: str, body: bytes | Path, trusted: bool = False) -> Database:
        """Verify an LTX file and append it to the database.

        ``body`` is the file's bytes (small ones are verified by the metadata writer) or the path of an
        fsynced file in the data directory, which is linked into L0; ``trusted`` for a file the store
        wrote itself (see :func:`inspect`).
        """
        inc: Incoming | None = None
        if isinstance(body, Path):
            inc = await asyncio.to_thread(inspect_file, body, trusted)
            size = inc.size
        else:
            size = len(body)
            if size > INLINE_INSPECT_BYTES:
                inc = await asyncio.to_thread(inspect, io.BytesIO(body), size)
        # Shielded: the database's files lock is held until the writer has recorded the file or
        # removed it, even when the caller goes away (and the outcome counts as retrieved, so a failure
        # after a cancellation is not logged as lost).
        append = asyncio.ensure_future(self._append(cluster, name, body, inc))
        append.add_done_callback(lambda t: t.cancelled() or t.exception())
        db, header = await asyncio.shield(append)
        crash_point("ingest.committed")
        self.metrics.tx_total.labels(cluster).inc(header.max_txid - header.min_txid + 1)
        self.metrics.tx_files.labels(cluster).inc()
        self.metrics.tx_bytes.labels(cluster).inc(size)
        if header.is_snapshot:
            log.info(
                "database created cluster=%s database=%s txid=%d size=%d",
                cluster,
                name,
                db.txid,
                db.commit * db.page_size,
            )
        return db

    async def _append(
        self, cluster: str, name: str, body: bytes | Path, inc: Incoming | None
    ) -> tuple[Database, Header]:
        """Place the L0 file of ``body`` and record it, in the writer process (which syncs the file with
        its group, before the commit, and removes it if it is not recorded)."""
        async with self.locks(cluster, name).files:  # deletes remove the whole directory
            try:
                return await self.meta.write(append, self.l0_dir, cluster, name, body, inc)
            except LfsbError as e:
                if e.code == "EPOSMISMATCH":
                    self.metrics.pos_mismatches.labels(cluster).inc()
                raise

    # -- snapshots ------------------------------------------------------------------------------
    def remote_info(self, db: Database, f: LTXFile) -> FileInfo:
        """The object-store handle of a remote file of ``db``."""
        created = datetime.fromtimestamp(f.created_at / 1000, UTC)
        return FileInfo(db.cluster, db.name, f.level, f.min_txid, f.max_txid, f.size, created)

    @contextlib.asynccontextmanager
    async def open_files(self, db: Database, files: list[LTXFile]) -> AsyncIterator[list[BinaryIO]]:
        """Open local copies of ``files`` (L0 in place, remote ones downloaded); closed and removed after."""
        handles: list[BinaryIO] = []
        downloads: list[Path] = []
        try:
            local = [
                l0_path(self.l0_dir, db.cluster, db.name, f.filename) if f.level == L0 else None
                for f in files
            ]

            def _open_local() -> None:  # all in one trip to a worker thread
                for path in local:
                    handles.append(open(path, "rb") if path is not None else None)  # type: ignore[arg-type]  # noqa: SIM115

            async with self.locks(db.cluster, db.name).files:
                await asyncio.to_thread(_open_local)
            sem = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)

            async def _download(i: int, f: LTXFile) -> None:
                dest = self.temp_path(f"download-{f.level}")
                downloads.append(dest)
                async with sem:
                    await self.objects.download(self.remote_info(db, f), dest)
                handles[i] = await asyncio.to_thread(open, dest, "rb")

            tasks = [asyncio.ensure_future(_download(i, f)) for i, f in enumerate(files) if f.level != L0]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:  # one failed: stop the others before their files are cleaned up
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            yield handles
        finally:
            for h in handles:
                if h is not None:
                    h.close()
            for p in downloads:
                p.unlink(missing_ok=True)

    async def build_snapshot(
        self, db: Database, txid: int, dest: Path, compress: bool = True
    ) -> tuple[Header, Trailer]:
        """Write the snapshot of ``db`` at exactly ``txid`` to ``dest`` (ENOTXID if not restorable).

        Planned again when a planned file vanishes meanwhile: an export does not wait for retention,
        which may remove a file once another one covers its transactions."""
        for attempt in range(PLAN_ATTEMPTS):
            plan = snapshot_plan(await self.files(db), txid)
            try:
                async with self.open_files(db, plan) as handles:
                    return await asyncio.to_thread(compact_files, handles, dest, compress, self.tmp_dir)
            except (FileNotFoundError, NotFound):
                if attempt == PLAN_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def current_snapshot(self, db: Database) -> BinaryIO:
        """An open handle on the compressed snapshot of ``db`` at its TXID (as read), built once per
        TXID and kept in :class:`SnapshotCache`; the caller closes it."""
        cache = self.snapshots
        async with cache.lock(db.id):
            kept = await asyncio.to_thread(cache.open, db.id)
            if kept is not None and kept[0] == db.txid:
                return kept[1]
            built = self.temp_path("snapshot")
            try:
                if kept is None or not await self._build_from_kept(db, kept, built):
                    await self.build_snapshot(db, db.txid, built)
                return await asyncio.to_thread(cache.put, db.id, db.txid, built)
            finally:
                built.unlink(missing_ok=True)

    async def _build_from_kept(self, db: Database, kept: tuple[int, BinaryIO], dest: Path) -> bool:
        """Write the snapshot of ``db`` at its TXID to ``dest`` from the kept snapshot at an earlier TXID
        and the L0 files since (the fewest reads); False when those files do not follow on from it (the
        caller plans from storage instead). Closes the kept handle."""
        since, f = kept
        with f:
            run = sorted((x for x in await self.files(db) if x.level == L0 and x.min_txid > since),
                         key=lambda x: x.min_txid)  # fmt: skip
            follows = since + 1
            for x in run:
                if x.min_txid != follows:
                    return False
                follows = x.max_txid + 1
            if not run or follows != db.txid + 1:
                return False
            try:
                async with self.open_files(db, run) as handles:
                    await asyncio.to_thread(compact_files, [f, *handles], dest, True, self.tmp_dir)
            except FileNotFoundError:  # an L0 file removed by retention meanwhile
                return False
        return True

    async def record_upload(self, db: Database, f: LTXFile, raise_hwm: bool) -> bool:
        """Add an uploaded file to the index (and raise the HWM); False if the database is gone."""
        return await self.meta.write(index_upload, db, f, raise_hwm)

    async def delete_database(self, cluster: str, name: str) -> None:
        """Remove a database for good (a purge): every object under its prefix (indexed or not), its L0
        files, its rows."""
        locks = self.locks(cluster, name)
        async with locks.work, locks.files:
            db = await self.database(cluster, name)
            infos: list[FileInfo] = []
            for level in await self.objects.list_levels(cluster, name):
                infos += await self.objects.list_files(cluster, name, level)
            await self.objects.delete(infos)
            await asyncio.to_thread(shutil.rmtree, self.l0_dir / cluster / name, True)
            await self.meta.write(execute, "DELETE FROM databases WHERE id = ?", (db.id,))
            await asyncio.to_thread(self.snapshots.drop, db.id)
        log.info("database removed cluster=%s database=%s files=%d", cluster, name, len(infos))

    async def remove_l0(self, db: Database, files: list[LTXFile]) -> None:
        """Forget L0 files and delete them from disk."""
        if not files:
            return
        async with self.locks(db.cluster, db.name).files:
            await self.meta.write(
                executemany,
                "DELETE FROM l0_files WHERE db_id = ? AND min_txid = ?",
                [(db.id, f.min_txid) for f in files],
            )
            crash_point("retention.l0_unindexed")

            def _unlink() -> None:
                for f in files:
                    l0_path(self.l0_dir, db.cluster, db.name, f.filename).unlink(missing_ok=True)

            await asyncio.to_thread(_unlink)

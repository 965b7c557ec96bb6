"""Compaction: L0 -> L1 -> L2 -> L3 on wall-clock schedules and the snapshot level 9, then retention.

Each run of a level, for each database, merges the contiguous run of source-level files that
follows the level's last file (at most 100) into one LZ4 file, uploads it, then records it in
one short metadata transaction. Storage I/O and LTX work happen outside any transaction, so
ingestion never waits on compaction (design.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from ..errors import LfsbError
from ..faults import crash_point
from ..ltx import format_txid
from ..observability import report_exception, timed
from ..storage import FileMetadata
from .db import now_ms
from .levels import SNAPSHOT_LEVEL, Level
from .records import L0, Database, LTXFile
from .retention import enforce_retention
from .store import Store, compact_files

log = logging.getLogger(__name__)

MAX_SOURCE_FILES = 100


def _max_txid(files: Iterable[LTXFile], level: int) -> int:
    return max((f.max_txid for f in files if f.level == level), default=0)


def source_run(files: list[LTXFile], level: int) -> list[LTXFile]:
    """The contiguous files of ``level - 1`` that follow ``level``'s last file (at most 100)."""
    expect = _max_txid(files, level) + 1
    run = []
    for f in sorted(
        (f for f in files if f.level == level - 1 and f.min_txid >= expect), key=lambda f: f.min_txid
    ):
        if f.min_txid != expect or len(run) == MAX_SOURCE_FILES:
            break
        run.append(f)
        expect = f.max_txid + 1
    return run


async def _upload(store: Store, db: Database, level: int, inputs: list[LTXFile] | int) -> LTXFile | None:
    """Build a level file (a merge of ``inputs``, or the snapshot at a TXID), upload and record it."""
    dest = store.temp_path(f"l{level}")
    try:
        if isinstance(inputs, int):
            header, trailer = await store.build_snapshot(db, inputs, dest)
        else:
            async with store.open_files(db, inputs) as handles:
                header, trailer = await asyncio.to_thread(compact_files, handles, dest, True, store.tmp_dir)
        crash_point(f"compaction.l{level}.built")
        meta = FileMetadata(
            header.page_size,
            header.commit,
            header.timestamp,
            header.pre_apply_checksum,
            trailer.post_apply_checksum,
        )
        info = await store.objects.upload(
            db.cluster, db.name, level, header.min_txid, header.max_txid, dest, meta
        )
    finally:
        dest.unlink(missing_ok=True)
    crash_point(f"compaction.l{level}.uploaded")
    uploaded = LTXFile(
        level,
        header.min_txid,
        header.max_txid,
        header.commit,
        header.timestamp,
        header.pre_apply_checksum,
        trailer.post_apply_checksum,
        info.size,
        int(info.created_at.timestamp() * 1000),
    )
    if not await store.record_upload(db, uploaded, raise_hwm=level == 1):
        await store.objects.delete([info])  # the database was deleted meanwhile
        return None
    crash_point(f"compaction.l{level}.recorded")
    log.info(
        "compacted cluster=%s database=%s level=%d min=%s max=%s size=%d",
        db.cluster,
        db.name,
        level,
        format_txid(uploaded.min_txid),
        format_txid(uploaded.max_txid),
        uploaded.size,
    )
    return uploaded


async def compact_level(store: Store, db: Database, level: int) -> LTXFile | None:
    """One run of ``level`` (1..8) for ``db``; None when there is nothing new."""
    files = await store.files(db)
    run = source_run(files, level)
    if not run:
        return None
    return await _upload(store, db, level, run)


async def compact_snapshot(store: Store, db: Database, top_level: int) -> LTXFile | None:
    """A new level-9 snapshot at the last TXID of ``top_level``, if it is newer than the last one."""
    files = await store.files(db)
    target = _max_txid(files, top_level)
    if target == 0 or target <= _max_txid(files, SNAPSHOT_LEVEL):
        return None
    return await _upload(store, db, SNAPSHOT_LEVEL, target)


class Scheduler:
    """Runs every level on its wall-clock boundaries for every database that has new work."""

    def __init__(self, store: Store) -> None:
        config = store.config
        self.store = store
        self.levels = list(config.levels)
        self.snapshot = Level(SNAPSHOT_LEVEL, config.snapshot_interval, config.snapshot_retention)
        self.retention = {L0: config.l0_retention} | {
            level.level: level.retention for level in [*self.levels, self.snapshot]
        }
        self._tasks: list[asyncio.Task] = []
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        """Start one monitor task per level."""
        for level in [*self.levels, self.snapshot]:
            log.info("monitoring compaction level=%d interval=%ss", level.level, level.interval)
            self._tasks.append(asyncio.create_task(self._monitor(level), name=f"compaction-l{level.level}"))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; let running compaction steps finish (up to ``timeout`` seconds)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._running:
            await asyncio.wait(self._running, timeout=timeout)

    async def _monitor(self, level: Level) -> None:
        while True:
            await asyncio.sleep(max(0.0, level.next_run_at(time.time()) - time.time()))
            # Shielded so that stop() lets a running step finish instead of cutting an upload short.
            task = asyncio.create_task(self.run(level.level))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            await asyncio.shield(task)

    async def run(self, level: int) -> int:
        """One run of ``level`` over every database with new work, then retention; files written."""
        candidates = await self._candidates(level)
        results = [await self._step(cluster, name, level) for cluster, name in candidates]
        written = sum(r or 0 for r in results)
        if None not in results:
            self.store.metrics.compaction_succeeded(level)
        else:
            self.store.metrics.compaction_failed(level)
        if level != 1:  # a sweep for idle databases too (L1 runs are too frequent for that)
            for db in await self._retention_due():
                if db not in candidates:
                    await self._step(*db, None)
        return written

    async def _step(self, cluster: str, name: str, level: int | None) -> int | None:
        """Compact one database to ``level`` (None: retention only): files written, None on failure.

        One failing database never stops the others.
        """
        metrics = self.store.metrics
        label = str(level) if level is not None else "retention"
        async with self.store.locks(cluster, name).work:
            stop_timer = timed(metrics.compaction_seconds.labels(label))
            try:
                db = await self.store.database(cluster, name)
                done = None
                if level == SNAPSHOT_LEVEL:
                    done = await compact_snapshot(self.store, db, self.levels[-1].level)
                elif level is not None:
                    done = await compact_level(self.store, db, level)
                await enforce_retention(self.store, db, self.retention)
            except Exception as e:
                if isinstance(e, LfsbError) and e.code == "ENODB":
                    return 0  # deleted meanwhile
                metrics.compaction_failures.labels(label).inc()
                log.exception("compaction failed cluster=%s database=%s level=%s", cluster, name, label)
                report_exception(e, cluster=cluster, database=name, level=label)
                return None
            finally:
                stop_timer()
            metrics.compaction_runs.labels(label).inc()
            return int(done is not None)

    async def _retention_due(self) -> list[tuple[str, str]]:
        """Databases whose retention may have work now (never all of them: see ``next_due``)."""
        query = (
            "SELECT cluster, name FROM databases WHERE deleted_at IS NULL"
            " AND (retention_due_at IS NULL OR retention_due_at <= ?)"
        )  # sorted here, as in _candidates
        return sorted(await self.store.meta.read(lambda c: [tuple(r) for r in c.execute(query, (now_ms(),))]))

    async def _candidates(self, level: int) -> list[tuple[str, str]]:
        """Databases whose source level is ahead of ``level``."""
        if level == 1:  # the transactions not yet in level 1 are those past the HWM (a partial index;
            # sorted here: an ORDER BY would make SQLite walk the name index over every database)
            return sorted(
                await self.store.meta.read(
                    lambda c: c.execute(
                        "SELECT cluster, name FROM databases WHERE txid > hwm AND deleted_at IS NULL"
                    ).fetchall()
                )
            )
        src = self.levels[-1].level if level == SNAPSHOT_LEVEL else level - 1
        query = (
            "SELECT d.cluster, d.name FROM databases d WHERE d.deleted_at IS NULL AND "
            + ("d.txid" if src == L0 else "(SELECT COALESCE(MAX(max_txid), 0) FROM remote_files"
               " WHERE db_id = d.id AND level = :src)")
            + " > (SELECT COALESCE(MAX(max_txid), 0) FROM remote_files WHERE db_id = d.id AND level = :dst)"
            " ORDER BY d.cluster, d.name"
        )  # fmt: skip
        return await self.store.meta.read(lambda c: c.execute(query, {"src": src, "dst": level}).fetchall())

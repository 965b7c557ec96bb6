"""The storage scrub: every object in storage is read back and verified once per ``LFSB_SCRUB_INTERVAL``,
at no more than ``LFSB_SCRUB_RATE`` bytes per second.

An object is verified as the LTX reference does (header, every page, LZ4 frames, checksums, trailer) and
compared with its entry in the index and its object metadata (range, size, commit, timestamp, pre- and
post-apply checksums). A missing or corrupt object is logged, counted, sent to Sentry and notified,
and marked in the index so that snapshot plans route around it. Then it is repaired if the server still
holds files that cover its range (local L0 files, or the lower-level files it was compacted from):
they are merged again, checked against the index and uploaded under the same key.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from ..errors import LfsbError
from ..ltx import LTXError, format_filename, verify
from ..notify import Incidents
from ..observability import report_exception
from ..storage import FileMetadata, NotFound
from .background import Background
from .db import now_ms
from .plan import cover
from .records import DATABASE_COLUMNS, REMOTE_COLUMNS, Database, LTXFile, remote_from_row
from .store import Store, compact_files
from .writes import index_upload, mark_corrupt, mark_scrubbed

log = logging.getLogger(__name__)

BATCH = 100
MAX_SLEEP = 60.0


class ObjectCorrupt(Exception):
    """The scrub found an object in storage missing or corrupt (reported to Sentry)."""


def check_object(path: Path, f: LTXFile, meta: FileMetadata, page_size: int) -> str:
    """(On a worker thread) What is wrong with the downloaded object at ``path`` of index entry ``f``
    and object metadata ``meta``; "" if nothing."""
    size = path.stat().st_size
    if size != f.size:
        return f"size {size} differs from the index's {f.size}"
    try:
        with open(path, "rb") as src:
            header, trailer, _ = verify(src)
    except LTXError as e:
        return f"does not verify: {e}"
    found = (
        header.min_txid,
        header.max_txid,
        header.commit,
        header.timestamp,
        header.pre_apply_checksum,
        trailer.post_apply_checksum,
    )
    indexed = (f.min_txid, f.max_txid, f.commit, f.timestamp, f.pre_apply_checksum, f.post_apply_checksum)
    if found != indexed:
        return "header or trailer differs from the index"
    stored = (meta.page_size, meta.commit, meta.timestamp, meta.pre_apply_checksum, meta.post_apply_checksum)
    if stored != (header.page_size, *found[2:]) or header.page_size != page_size:
        return "object metadata differs from the file"
    return ""


class Scrubber(Background):
    """Reads every object back, bounded in rate, marks and repairs the bad ones."""

    task_name = "scrub"

    def __init__(self, store: Store, incidents: Incidents | None = None) -> None:
        super().__init__()
        self.store = store
        self.incidents = incidents
        self.interval = store.config.scrub_interval
        self.rate = store.config.scrub_rate
        self.passes = 0
        """Times the scrub found nothing left to verify (tests wait on it)."""

    def start(self) -> None:
        """Start scrubbing."""
        log.info("scrubbing storage interval=%ss rate=%d", self.interval, self.rate)
        super().start()

    async def run(self) -> None:
        while True:
            try:
                done = await self.run_once()
            except Exception as e:
                log.exception("scrub failed")
                report_exception(e)
                done = 0
            if not done:
                self.passes += 1
                await asyncio.sleep(min(self.interval / 10, MAX_SLEEP))

    async def due(self, limit: int = BATCH) -> list[tuple[Database, LTXFile]]:
        """The objects not verified within the interval, the longest unverified first. An upload counts as
        a verification (the file was built and checked right before it)."""
        before = now_ms() - int(self.interval * 1000)
        cols = ", ".join(f"d.{c.strip()}" for c in DATABASE_COLUMNS.split(","))
        rcols = ", ".join(f"f.{c.strip()}" for c in REMOTE_COLUMNS.split(","))
        query = (
            f"SELECT {cols}, {rcols} FROM remote_files f JOIN databases d ON d.id = f.db_id"
            " WHERE f.corrupt IS NULL AND COALESCE(f.scrubbed_at, f.created_at) < ?"
            " ORDER BY COALESCE(f.scrubbed_at, f.created_at) LIMIT ?"
        )
        progress = (
            "SELECT COUNT(*), COUNT(CASE WHEN COALESCE(scrubbed_at, created_at) >= ? THEN 1 END)"
            " FROM remote_files"
        )

        def _read(c: sqlite3.Connection) -> tuple[list[tuple], int, int]:
            total, verified = c.execute(progress, (before,)).fetchone()
            return c.execute(query, (before, limit)).fetchall(), total, verified

        rows, total, verified = await self.store.meta.read(_read)
        self.store.metrics.scrub_progress.set(verified / total if total else 1.0)
        n = len(DATABASE_COLUMNS.split(","))
        return [(Database.from_row(r[:n]), remote_from_row(r[n:])) for r in rows]

    async def run_once(self) -> int:
        """Verify the next batch of objects due (rate-limited); how many were verified."""
        batch = await self.due()
        for db, f in batch:
            started = time.monotonic()
            await self.scrub(db, f)
            # At most LFSB_SCRUB_RATE bytes per second, on average.
            await asyncio.sleep(max(0.0, f.size / self.rate - (time.monotonic() - started)))
        return len(batch)

    async def scrub(self, db: Database, f: LTXFile) -> str:
        """Verify one object; mark and try to repair it if it is bad. What was wrong ("" if nothing)."""
        metrics = self.store.metrics
        info = self.store.remote_info(db, f)
        path = self.store.temp_path("scrub")
        try:
            meta = await self.store.objects.metadata(info)
            await self.store.objects.download(info, path)
            problem = await asyncio.to_thread(check_object, path, f, meta, db.page_size)
        except NotFound:
            problem = "missing from storage"
        finally:
            path.unlink(missing_ok=True)
        if problem and f.key not in {g.key for g in await self.store.files(db, corrupt=True)}:
            return ""  # removed by retention (or with its database) meanwhile: nothing is wrong
        metrics.scrub_objects.inc()
        metrics.scrub_bytes.inc(f.size)
        at = now_ms()
        if not problem:
            await self.store.meta.write(mark_scrubbed, db.id, f.key, at)
            return ""
        await self.store.meta.write(mark_corrupt, db.id, f.key, problem, at)
        metrics.scrub_corrupt.inc()
        name = f"{db.cluster}/{db.name}/{f.level}/{format_filename(f.min_txid, f.max_txid)}"
        log.error(
            "scrub found a bad object cluster=%s database=%s key=%s problem=%s",
            db.cluster,
            db.name,
            name,
            problem,
        )
        report_exception(ObjectCorrupt(f"{name}: {problem}"), cluster=db.cluster, database=db.name)
        if self.incidents is not None:
            self.incidents.update(f"corrupt:{name}", True, f"object {name} in storage: {problem}")
        if await self.repair(db, f) and self.incidents is not None:
            self.incidents.update(f"corrupt:{name}", False, f"object {name} repaired")
        return problem

    async def repair(self, db: Database, f: LTXFile) -> bool:
        """Rebuild a bad object from other files covering its range and upload it again under its key;
        whether it was repaired."""
        async with self.store.locks(db.cluster, db.name).work:
            try:
                sources = cover(
                    [g for g in await self.store.files(db) if g.key != f.key], f.min_txid, f.max_txid
                )
            except LfsbError:
                log.warning(
                    "bad object cannot be repaired: nothing else covers its range cluster=%s database=%s"
                    " level=%d min=%d max=%d",
                    db.cluster,
                    db.name,
                    f.level,
                    f.min_txid,
                    f.max_txid,
                )
                return False
            dest = self.store.temp_path("repair")
            try:
                async with self.store.open_files(db, sources) as handles:
                    header, trailer = await asyncio.to_thread(
                        compact_files, handles, dest, True, self.store.tmp_dir
                    )
                rebuilt = (
                    header.commit,
                    header.timestamp,
                    header.pre_apply_checksum,
                    trailer.post_apply_checksum,
                )
                if rebuilt != (f.commit, f.timestamp, f.pre_apply_checksum, f.post_apply_checksum):
                    log.error("repair rebuilt another state cluster=%s database=%s", db.cluster, db.name)
                    return False
                meta = FileMetadata(header.page_size, *rebuilt)
                info = await self.store.objects.upload(
                    db.cluster, db.name, f.level, f.min_txid, f.max_txid, dest, meta
                )
            finally:
                dest.unlink(missing_ok=True)
            repaired = LTXFile(
                f.level, f.min_txid, f.max_txid, *rebuilt[:2], *rebuilt[2:], info.size,
                int(info.created_at.timestamp() * 1000),
            )  # fmt: skip
            await self.store.meta.write(index_upload, db, repaired, False)
        log.info(
            "bad object repaired cluster=%s database=%s level=%d min=%d max=%d from=%d files",
            db.cluster,
            db.name,
            f.level,
            f.min_txid,
            f.max_txid,
            len(sources),
        )
        return True

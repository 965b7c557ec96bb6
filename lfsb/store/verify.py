"""Restore checks: rebuild a database's newest point from object storage alone and prove that it opens.

A check plans the newest point the files in object storage reach (never local L0 files), downloads
them, merges them into a snapshot, decodes it to a SQLite file in the temp area, runs ``PRAGMA
integrity_check`` and compares the database checksum with the recorded post-apply checksum. The CPU
and file work runs in a separate process at a low priority, streaming in chunks, so a check of a large
database never competes with the event loop for the GIL (``POST /db/tx`` keeps its latency).

The :class:`Verifier` checks every database once per ``LFSB_VERIFY_INTERVAL``, at a slot within the
interval that depends on its name (so ten thousand databases do not all check at once), at most
``LFSB_VERIFY_CONCURRENCY`` at a time; ``POST /db/verify`` asks for a check now.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import Kind, LfsbError
from ..ltx import LTXError, database_checksum, decode_database, format_checksum, format_timestamp, format_txid
from ..notify import Incidents
from ..observability import report_exception
from ..storage import NotFound
from ..storage.local import WriteBehind, remove_gradually
from .background import Background
from .db import now_ms, process_context
from .plan import point_at, point_before, reachable, snapshot_plan
from .records import L0, CheckRecord, Database, LTXFile
from .store import PLAN_ATTEMPTS, Store, compact_stream

log = logging.getLogger(__name__)

PIPE_BUFFER = 1024 * 1024
CHECK_NICENESS = 19
"""How much lower than the server's the check process's CPU priority is."""
CHECK_WRITE_RATE = 32 * 2**20
"""Bytes per second a check writes its SQLite file at most (ingestion's syncfs shares the disk: at 64 MiB/s
its p99 rose by about half)."""
CHECK_WRITE_CHUNK = 256 * 1024
"""Bytes a check writes out at a time (what an ingestion ``syncfs`` may wait behind)."""
INTEGRITY_ERRORS = 10
"""Problems ``PRAGMA integrity_check`` reports at most (the first ones say enough)."""
MAX_SLEEP = 60.0
BUSY_RETRY = 5.0
"""Seconds before checks that found no temp space (``LFSB_DISK_RESERVE``) are tried again."""
RESCAN = 600.0
"""Seconds between two scans of every database for the schedule (at most the interval): between them the
checker sleeps until the next check is due, so an idle server with 100,000 databases stays idle."""


def nothing_in_storage() -> LfsbError:
    """404 ``ENOTXID``: no file of the database has reached object storage yet."""
    return LfsbError(Kind.NOT_FOUND, "ENOTXID", "no point of this database is in object storage yet")


def _lower_priority() -> None:
    """(In the check process) Run below the server's priority."""
    with contextlib.suppress(OSError):
        os.nice(CHECK_NICENESS)


def rebuild_and_check(paths: list[str], tmp_dir: str, expected: int) -> tuple[int, str]:
    """(In the check process) Merge the LTX files at ``paths`` (a plan, oldest first) into a snapshot,
    decode it to a SQLite file, compare its database checksum with ``expected`` and run ``PRAGMA
    integrity_check``. Returns the SQLite file's size and the problem found ("" when it passed).

    The snapshot streams from the merge to the decoder through a pipe (never written to disk), the
    SQLite file is written out as it is written, at a bounded rate (:class:`WriteBehind`), so the check
    leaves little for ingestion's next ``syncfs`` to write out, and it is read back from the page cache
    and removed in small steps (:func:`remove_gradually`)."""
    db = Path(tmp_dir) / f"check-{uuid.uuid4().hex}.db"
    size = 0
    failed: list[BaseException] = []
    try:
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(open(p, "rb")) for p in paths]
            r, w = os.pipe()
            reader = stack.enter_context(open(r, "rb", buffering=PIPE_BUFFER))

            def _merge() -> None:  # closing the pipe ends the decoder's input
                try:
                    with open(w, "wb", buffering=PIPE_BUFFER) as pipe:
                        compact_stream(handles, pipe, False, Path(tmp_dir), checksums=True)
                except BaseException as e:  # reported by the decoder's side, which then fails too
                    failed.append(e)

            merging = threading.Thread(target=_merge, name="lfsb-check-merge")
            merging.start()
            try:
                with open(db, "wb") as out:
                    header, _ = decode_database(reader, WriteBehind(out, CHECK_WRITE_CHUNK, CHECK_WRITE_RATE))  # type: ignore[arg-type]
            except LTXError as e:
                if failed and isinstance(failed[0], LTXError):
                    raise failed[0] from None
                raise e from None
            finally:
                reader.close()  # a merge still writing gets a broken pipe
                merging.join()
        if failed and not isinstance(failed[0], BrokenPipeError):
            raise failed[0]
        size = db.stat().st_size
        with open(db, "rb") as f:
            checksum = database_checksum(f, header.page_size)
        if checksum != expected:
            return size, (
                f"database checksum {format_checksum(checksum)} differs from the recorded post-apply"
                f" checksum {format_checksum(expected)}"
            )
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            problems = [row[0] for row in conn.execute(f"PRAGMA integrity_check({INTEGRITY_ERRORS})")]
        finally:
            conn.close()
        if problems != ["ok"]:
            return size, "integrity_check: " + "; ".join(problems)
        return size, ""
    except LTXError as e:
        return size, f"rebuild failed: {e}"
    except sqlite3.DatabaseError as e:
        return size, f"integrity_check: {e}"
    finally:
        remove_gradually(db)


def remote_files(files: list[LTXFile]) -> list[LTXFile]:
    """The files of a database in object storage (what a check may use)."""
    return [f for f in files if f.level != L0]


def slot_phase(cluster: str, name: str, interval: float) -> float:
    """Where in each interval a database's scheduled check falls (seconds), spread by its name."""
    return zlib.crc32(f"{cluster}/{name}".encode()) / 2**32 * interval


def next_slot(after: float, phase: float, interval: float) -> float:
    """The first time later than ``after`` that is ``phase`` seconds into an interval."""
    return (math.floor((after - phase) / interval) + 1) * interval + phase


class Verifier(Background):
    """Runs restore checks: scheduled ones for every database, and asked-for ones."""

    task_name = "restore-checks"

    def __init__(self, store: Store, incidents: Incidents | None = None) -> None:
        super().__init__()
        self.store = store
        self.incidents = incidents
        self.interval = store.config.verify_interval
        store.metrics.restore_check_interval.set(self.interval)
        self._slots = asyncio.Semaphore(store.config.verify_concurrency)
        self._pool: ProcessPoolExecutor | None = None
        self._started = time.time()
        self.scheduled_runs = 0
        """Scheduled passes completed (tests wait on it)."""

    def start(self) -> None:
        """Start scheduling checks."""
        log.info("monitoring restore checks interval=%ss", self.interval)
        super().start()

    async def stop(self) -> None:
        """Stop scheduling and drop the check process (a check under way is abandoned, not recorded)."""
        await super().stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.store.config.verify_concurrency, process_context(), initializer=_lower_priority
            )
        return self._pool

    # -- scheduling ---------------------------------------------------------------------------------
    async def run(self) -> None:
        schedule: list[tuple[float, str, str]] = []  # a heap of (when, cluster, name)
        scanned, rescan = -math.inf, min(self.interval, RESCAN)
        while True:
            now = time.time()
            if now - scanned >= rescan:  # new databases join at the next scan
                schedule = await self.schedule()
                heapq.heapify(schedule)
                scanned = now
            due = []
            while schedule and schedule[0][0] <= now:
                due.append(heapq.heappop(schedule)[1:])
            done = await asyncio.gather(*(self._scheduled(cluster, name) for cluster, name in due))
            self.scheduled_runs += 1
            for (cluster, name), ran in zip(due, done, strict=True):
                # Next time at its slot; or, when it could not run (no temp space now), again shortly.
                phase = slot_phase(cluster, name, self.interval)
                at = next_slot(now, phase, self.interval) if ran else now + BUSY_RETRY
                heapq.heappush(schedule, (at, cluster, name))
            if not due:
                next_at = schedule[0][0] if schedule else math.inf
                await asyncio.sleep(max(0.0, min(next_at - now, scanned + rescan - now, MAX_SLEEP)))

    async def schedule(self) -> list[tuple[float, str, str]]:
        """When each database's next scheduled check falls: (time, cluster, name). One scan of the
        databases, made once per ``RESCAN`` seconds, not at every check."""
        rows = await self.store.meta.read(
            lambda c: c.execute(
                "SELECT d.cluster, d.name, (SELECT MAX(checked_at) FROM restore_checks"
                " WHERE db_id = d.id AND scheduled = 1) FROM databases d"
                " WHERE d.deleted_at IS NULL AND EXISTS (SELECT 1 FROM remote_files WHERE db_id = d.id)"
            ).fetchall()
        )
        return [
            (
                next_slot(last / 1000 if last is not None else self._started,
                          slot_phase(cluster, name, self.interval), self.interval),
                cluster,
                name,
            )
            for cluster, name, last in rows
        ]  # fmt: skip

    async def _scheduled(self, cluster: str, name: str) -> bool:
        """One scheduled check; False when it could not run now (no temp space: retried soon)."""
        try:
            db = await self.store.database(cluster, name)
            await self.check(db, scheduled=True)
        except LfsbError as e:
            if e.code == "EBUSY":
                log.warning("restore check postponed cluster=%s database=%s reason=%s", cluster, name, e)
                return False
            if e.code not in ("ENODB", "ENOTXID"):  # deleted meanwhile, or nothing in storage yet
                log.exception("restore check failed to run cluster=%s database=%s", cluster, name)
        except Exception as e:
            log.exception("restore check failed to run cluster=%s database=%s", cluster, name)
            report_exception(e, cluster=cluster, database=name)
        return True

    # -- one check ----------------------------------------------------------------------------------
    async def check(
        self, db: Database, txid: int = 0, timestamp: int | None = None, scheduled: bool = False
    ) -> CheckRecord:
        """Check the point ``txid`` (0: the newest one in object storage) or the latest point at or before
        ``timestamp``, record the outcome and return it. ENOTXID / ENOTIMESTAMP when object storage
        holds no such point."""
        async with self._slots:
            started = time.monotonic()
            for attempt in range(PLAN_ATTEMPTS):
                point, plan, expected = await self._plan(db, txid, timestamp)
                bytes_read, size, problem = sum(f.size for f in plan), 0, ""
                # Downloads, then the snapshot and the SQLite file: temp space, as an export takes.
                async with self.store.export_slot(2 * db.commit * db.page_size + bytes_read):
                    try:
                        async with self.store.open_files(db, plan) as handles:
                            size, problem = await asyncio.get_running_loop().run_in_executor(
                                self._executor(),
                                rebuild_and_check,
                                [h.name for h in handles],
                                str(self.store.tmp_dir),
                                expected,
                            )
                        break
                    except NotFound as e:
                        problem = f"object missing from storage: {e}"
                        indexed = {f.key for f in await self.store.files(db)}
                        if all(f.key in indexed for f in plan) or attempt == PLAN_ATTEMPTS - 1:
                            break  # else retention removed a planned file meanwhile: plan again
            record = CheckRecord(
                checked_at=now_ms(),
                txid=point,
                duration_ms=int((time.monotonic() - started) * 1000),
                bytes_read=bytes_read,
                db_bytes=size,
                ok=not problem,
                message=problem or "ok",
                scheduled=scheduled,
            )
        await self._report(db, record)
        return record

    async def _plan(self, db: Database, txid: int, timestamp: int | None) -> tuple[int, list[LTXFile], int]:
        """The point to check, the plan of object-storage files reaching it and its recorded checksum."""
        files = remote_files(await self.store.files(db))
        if not files:
            raise nothing_in_storage()
        if timestamp is not None:
            point = point_before(files, timestamp)
        elif txid:
            point = point_at(files, txid)
        else:
            best = reachable(files)
            if not best:
                raise LfsbError(
                    Kind.NOT_FOUND, "ENOTXID", "no chain of files in object storage starts at a snapshot"
                )
            point = point_at(files, max(best))
        return point.txid, snapshot_plan(files, point.txid), point.post_apply_checksum

    async def _report(self, db: Database, record: CheckRecord) -> None:
        """Record a check, count it, log it and open or resolve its incident."""
        if not await self.store.record_check(db, record):
            return  # the database was deleted meanwhile
        metrics = self.store.metrics
        metrics.restore_checks.labels("ok" if record.ok else "failed").inc()
        line = (
            "restore check %s cluster=%s database=%s txid=%s ms=%d bytes_read=%d db_bytes=%d message=%s",
            "passed" if record.ok else "FAILED",
            db.cluster,
            db.name,
            format_txid(record.txid),
            record.duration_ms,
            record.bytes_read,
            record.db_bytes,
            record.message,
        )
        if record.ok:
            log.info(*line)
        else:
            log.error(*line)
            report_exception(
                RestoreCheckFailed(f"{db.cluster}/{db.name}: {record.message}"),
                cluster=db.cluster,
                database=db.name,
            )
        if self.incidents is not None:
            self.incidents.update(
                f"check:{db.cluster}/{db.name}",
                not record.ok,
                f"restore check of {db.cluster}/{db.name} at TXID {format_txid(record.txid)}"
                f" {'failed: ' + record.message if not record.ok else 'passed again'}",
            )


class RestoreCheckFailed(Exception):
    """A restore check found a point that would not restore (reported to Sentry)."""


@dataclass(frozen=True)
class DatabaseStatus:
    """What ``lfsb status`` shows of one database: position, HWM lag, last L1 upload, last check."""

    name: str
    txid: int
    hwm: int
    last_l1_upload: int | None
    """Milliseconds since the epoch; None before the first."""
    last_check: CheckRecord | None

    def to_json(self) -> dict[str, object]:
        """The status as ``GET /status`` returns it."""
        return {
            "name": self.name,
            "txID": format_txid(self.txid),
            "hwm": format_txid(self.hwm),
            "hwmLag": self.txid - self.hwm,
            "lastL1Upload": format_timestamp(self.last_l1_upload) if self.last_l1_upload else None,
            "lastCheck": self.last_check.to_json() if self.last_check else None,
        }


async def cluster_status(store: Store, cluster: str) -> list[DatabaseStatus]:
    """The status of every database of ``cluster``, by name."""
    rows = await store.meta.read(
        lambda c: c.execute(
            "SELECT d.name, d.txid, d.hwm, (SELECT MAX(created_at) FROM remote_files"
            " WHERE db_id = d.id AND level = 1) FROM databases d WHERE d.cluster = ? AND d.deleted_at IS NULL"
            " ORDER BY d.name",
            (cluster,),
        ).fetchall()
    )
    checks = await store.last_checks(cluster)
    return [DatabaseStatus(name, txid, hwm, l1, checks.get(name)) for name, txid, hwm, l1 in rows]

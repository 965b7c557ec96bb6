"""The metadata db: SQLite in WAL mode, one writer thread, reader threads, numbered migrations."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1
_MIGRATION = re.compile(r"([0-9]+)_[A-Za-z0-9_]+\.sql")


def to_sql(checksum: int) -> int:
    """A u64 checksum as SQLite's signed 64-bit INTEGER."""
    return checksum - _U64 if checksum > _I64_MAX else checksum


def from_sql(value: int) -> int:
    """The u64 checksum stored by :func:`to_sql`."""
    return value & (_U64 - 1)


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with the package: (version, name, sql), in order."""
    found = []
    for entry in resources.files("lfsb.migrations").iterdir():
        if m := _MIGRATION.fullmatch(entry.name):
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``; returns the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{sql}\n;INSERT INTO schema_migrations VALUES "
            f"({version}, '{name}', {now_ms()});\nCOMMIT;"
        )
        applied.append(name)
    return applied


@dataclass
class _Write:
    """A queued :meth:`MetaDB.write`: the function, where its result goes, and the result once run."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    new_files: Sequence[Path]
    ok: bool = False
    value: Any = None
    """The function's result if ``ok``, else the exception that failed it (None: not run yet)."""


def _settle(writes: list[_Write]) -> None:
    for w in writes:
        if not w.future.done():  # the caller may have been cancelled meanwhile
            if w.ok:
                w.future.set_result(w.value)
            else:
                w.future.set_exception(w.value)


class MetaDB:
    """Async access to the metadata db: :meth:`write` on the single writer thread, :meth:`read` elsewhere."""

    def __init__(
        self, path: Path, readers: int = 4, sync_files: Callable[[list[Path]], None] | None = None
    ) -> None:
        self.path = path
        self._sync_files = sync_files
        """Makes the new files of a batch's writes durable, before its commit."""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lfsb-db-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="lfsb-db-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._scheduled = False
        """Whether a :meth:`_run_writes` is submitted that has not taken the queue yet."""
        self._queue_lock = threading.Lock()

    async def open(self) -> None:
        """Open the writer connection and apply pending migrations."""

        def _open() -> list[str]:
            self._write_conn = _connect(self.path)
            return apply_migrations(self._write_conn)

        applied = await asyncio.get_running_loop().run_in_executor(self._writer, _open)
        for name in applied:
            log.info("migration applied name=%s", name)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            with self._lock:
                self._all.append(conn)
        return conn

    def _run_writes(self) -> None:
        """Run every queued write in one transaction, each in its own savepoint (group commit: concurrent
        writers share one commit, so one fsync), then hand out the results, only after the commit.

        The new files of the writes that succeeded are made durable first, all at once: a commit never
        refers to a file that a power loss could take away."""
        with self._queue_lock:
            batch, self._queue, self._scheduled = self._queue, [], False
        conn = self._write_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for w in batch:
                conn.execute("SAVEPOINT write")
                try:
                    w.value, w.ok = w.fn(conn), True
                except BaseException as e:
                    w.value = e
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back: the batch is lost
                    conn.execute("ROLLBACK TO write")
                conn.execute("RELEASE write")
            new_files = [path for w in batch if w.ok for path in w.new_files]
            if new_files:
                assert self._sync_files is not None, "new_files needs a MetaDB with sync_files"
                self._sync_files(new_files)
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for w in batch:
                if w.ok or w.value is None:  # rolled back, or never run
                    w.ok, w.value = False, e
        by_loop: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
        for w in batch:
            by_loop.setdefault(w.loop, []).append(w)
        for loop, writes in by_loop.items():  # one wake-up per event loop, not one per write
            loop.call_soon_threadsafe(_settle, writes)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    async def write(self, fn: Callable[[sqlite3.Connection], T], new_files: Sequence[Path] = ()) -> T:
        """Run ``fn(conn)`` atomically on the writer thread and return once it is committed.

        It runs in a savepoint of a ``BEGIN IMMEDIATE`` transaction shared with the writes queued
        meanwhile: if ``fn`` raises, only its own changes are rolled back. ``new_files`` are files that
        ``fn`` creates and records: if it succeeds, they are made durable before the commit.
        """
        loop = asyncio.get_running_loop()
        w = _Write(fn, loop.create_future(), loop, new_files)
        with self._queue_lock:
            self._queue.append(w)
            schedule, self._scheduled = not self._scheduled, True
        if schedule:  # else a run that has not taken the queue yet will take this write too
            self._writer.submit(self._run_writes)
        return await w.future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one read transaction (a consistent snapshot) on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)

    async def close(self) -> None:
        """Finish queued work and close every connection."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.shutdown)
        await loop.run_in_executor(None, self._readers.shutdown)
        with self._lock:
            conns = [*self._all, self._write_conn]
            self._all.clear()
        for conn in conns:
            if conn is not None:
                conn.close()

"""The metadata db: SQLite in WAL mode, one writer process, reader threads, numbered migrations."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import pickle
import re
import signal
import sqlite3
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LfsbError
from ..storage.local import remove_file

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


class WriteConnection(sqlite3.Connection):
    """The writer's connection, which a write receives: it also collects the files the write creates."""

    new_files: list[Path]

    def created(self, path: Path) -> None:
        """Register ``path``, a file the running write has created and records: if the write succeeds,
        the file is made durable before the commit, and removed if the commit fails (a write that fails
        removes its own files)."""
        self.new_files.append(path)


def _connect(path: Path, factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=factory)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def execute(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> int:
    """A write of one SQL statement (for :meth:`MetaDB.write`); returns how many rows it changed."""
    return conn.execute(sql, params).rowcount


def executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """A write of one SQL statement run for each of ``rows``; returns how many rows it changed."""
    return conn.executemany(sql, rows).rowcount


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


_ID = struct.Struct("<Q")


def process_context() -> multiprocessing.context.BaseContext:
    """The context of the server's helper processes (the metadata writer, restore checks).

    Writer processes fork from a small server process (started once, with the store's modules
    imported), never from this multi-threaded process itself. As with any multiprocessing start method
    but ``fork``, the main script is imported again there (as ``__mp_main__``): a script that starts the
    server must do so under ``if __name__ == "__main__"``, as the entry points do."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["lfsb.store.ingest", "lfsb.store.writes"])
    return ctx


@dataclass
class _Write:
    """A write in the writer process: what to run, and its result once run."""

    id: int
    fn: Callable[..., Any] | None
    args: tuple[Any, ...]
    new_files: list[Path] = field(default_factory=list)
    ok: bool = False
    value: Any = None
    """The function's result if ``ok``, else the exception that failed it (None: not run yet)."""


def _decode_write(message: bytes) -> _Write:
    (write_id,) = _ID.unpack_from(message)
    try:
        fn, args = pickle.loads(message[_ID.size :])
    except Exception as e:  # e.g. a function this process cannot import
        return _Write(write_id, None, (), value=e)
    return _Write(write_id, fn, args)


def _portable(value: BaseException) -> BaseException:
    """``value`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:
        return RuntimeError(f"{type(value).__name__}: {value}")


def _run_batch(
    conn: WriteConnection, batch: list[_Write], sync_files: Callable[[list[Path]], None] | None
) -> None:
    """Run ``batch`` in one transaction, each write in its own savepoint (group commit: concurrent
    writers share one commit, so one fsync).

    The new files of the writes that succeeded are made durable first, all at once: a commit never
    refers to a file that a power loss could take away. If the group fails, they are removed."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        for w in batch:
            if w.fn is None:
                continue
            conn.execute("SAVEPOINT write")
            conn.new_files = w.new_files
            try:
                w.value, w.ok = w.fn(conn, *w.args), True
            except BaseException as e:
                if not isinstance(e, LfsbError):  # our own fault: keep where it happened
                    e.add_note("in the metadata writer:\n" + "".join(traceback.format_tb(e.__traceback__)))
                w.value = _portable(e)
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back: the batch is lost
                conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
        new_files = [path for w in batch if w.ok for path in w.new_files]
        if new_files:
            assert sync_files is not None, "created files need a MetaDB with sync_files"
            sync_files(new_files)
        conn.execute("COMMIT")
    except BaseException as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        failure = _portable(e)
        for w in batch:
            if w.ok:
                for path in w.new_files:
                    remove_file(path)
            if w.ok or w.value is None:  # rolled back, or never run
                w.ok, w.value = False, failure


def _serve_writes(
    pipe: Connection, path: Path, sync_files: Callable[[list[Path]], None] | None, counts: Any
) -> None:
    """The writer process: run the writes that arrive, group by group, until the pipe says no more.
    ``counts`` (two shared integers) counts the writes received, and those taken into a group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server shuts down gracefully, then closes the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = _connect(path, WriteConnection)
    assert isinstance(conn, WriteConnection)
    arrived: list[bytes] = []
    more = threading.Condition()
    open_ = True

    def receive() -> None:  # drains the pipe while a group runs, so a sender never waits
        nonlocal open_
        while message := _recv(pipe):
            with more:
                arrived.append(message)
                counts[0] += 1
                more.notify()
        with more:
            open_ = False
            more.notify()

    threading.Thread(target=receive, name="lfsb-db-receive", daemon=True).start()
    while True:
        with more:
            while not arrived and open_:
                more.wait()
            if not arrived:
                break
            messages = arrived[:]
            arrived.clear()
            counts[1] += len(messages)
        batch = [_decode_write(m) for m in messages]
        _run_batch(conn, batch, sync_files)
        pipe.send_bytes(_encode_results(batch))
    conn.close()


def _encode_results(batch: list[_Write]) -> bytes:
    """The results of ``batch`` as one message; a result that does not pickle becomes a RuntimeError."""
    results = [(w.id, w.ok, w.value) for w in batch]
    try:
        return pickle.dumps(results, pickle.HIGHEST_PROTOCOL)
    except Exception:
        for i, (write_id, _ok, value) in enumerate(results):
            try:
                pickle.dumps(value)
            except Exception as e:
                results[i] = (write_id, False, RuntimeError(f"result of a write cannot be sent: {e}"))
        return pickle.dumps(results, pickle.HIGHEST_PROTOCOL)


def _recv(pipe: Connection) -> bytes:
    """The next message of ``pipe``; empty when the other side is done or gone."""
    try:
        return pipe.recv_bytes()
    except (EOFError, OSError):
        return b""


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if not future.done():  # the caller may have been cancelled meanwhile
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _migrate(path: Path) -> list[str]:
    conn = _connect(path)
    try:
        return apply_migrations(conn)
    finally:
        conn.close()


class MetaDB:
    """Async access to the metadata db: :meth:`write` in the writer process, :meth:`read` on threads here.

    The writer is a child process with its own GIL, so a busy event loop does not slow the commits down
    and the commits do not compete with the requests for the interpreter. If it dies (it is never meant
    to, but a crash point may kill it), this process kills itself with SIGKILL: a crash of the server,
    which acknowledged nothing the writer had not committed.
    """

    def __init__(
        self, path: Path, readers: int = 4, sync_files: Callable[[list[Path]], None] | None = None
    ) -> None:
        """``sync_files`` makes the new files of a group's writes durable, before its commit; it runs in
        the writer process, so it must pickle."""
        self.path = path
        self._sync_files = sync_files
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="lfsb-db-reader")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pipe: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._results: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], asyncio.AbstractEventLoop]] = {}
        self._closing = False
        self._counts: Any = None

    async def open(self) -> None:
        """Apply pending migrations and start the writer process."""
        for name in await asyncio.to_thread(_migrate, self.path):
            log.info("migration applied name=%s", name)

        def _start() -> None:
            ctx = process_context()
            ours, theirs = ctx.Pipe()
            self._counts = ctx.Array("q", 2, lock=False)
            process = ctx.Process(
                target=_serve_writes,
                args=(theirs, self.path, self._sync_files, self._counts),
                name="lfsb-db-writer",
            )
            process.start()
            theirs.close()
            self._pipe, self._process = ours, process

        await asyncio.to_thread(_start)
        self._results = threading.Thread(
            target=self._receive_results, args=(self._pipe,), name="lfsb-db-results", daemon=True
        )
        self._results.start()

    def _receive_results(self, pipe: Connection) -> None:
        while message := _recv(pipe):
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            with self._lock:
                for write_id, ok, value in pickle.loads(message):
                    future, loop = self._pending.pop(write_id)
                    by_loop.setdefault(loop, []).append((future, ok, value))
            for loop, results in by_loop.items():  # one wake-up per event loop, not one per write
                loop.call_soon_threadsafe(_settle, results)
        if not self._closing:  # the writer died: so does this process, as in a crash
            log.critical("metadata writer process died, killing the server path=%s", self.path)
            os.kill(os.getpid(), signal.SIGKILL)

    def write_counts(self) -> tuple[int, int]:
        """How many writes the writer process has received, and taken into a group, so far (those
        between the two will form its next group)."""
        return (self._counts[0], self._counts[1]) if self._counts is not None else (0, 0)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            with self._lock:
                self._all.append(conn)
        return conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` atomically in the writer process and return once it is committed.

        ``fn`` is a module-level function (sent by name, with its pickled arguments; so is its result
        or exception). It runs in a savepoint of a ``BEGIN IMMEDIATE`` transaction shared with the
        writes queued meanwhile: if it raises, only its own changes are rolled back. ``conn`` is a
        :class:`WriteConnection`, where ``fn`` registers the files it creates and records.
        """
        payload = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._pipe is None or self._closing:
                raise RuntimeError("metadata db is not open")
            write_id = next(self._ids)
            self._pending[write_id] = (future, loop)
            self._pipe.send_bytes(_ID.pack(write_id) + payload)
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one read transaction (a consistent snapshot) on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)

    async def close(self) -> None:
        """Finish the queued writes, stop the writer process and close every connection."""
        with self._lock:
            self._closing = True
            pipe, process, results = self._pipe, self._process, self._results
            self._pipe = self._process = self._results = None
        if pipe is not None and process is not None and results is not None:
            pipe.send_bytes(b"")  # no more writes: the writer finishes its queue and exits

            def _stop() -> None:
                results.join()
                process.join()
                pipe.close()

            await asyncio.to_thread(_stop)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._readers.shutdown)
        with self._lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            conn.close()

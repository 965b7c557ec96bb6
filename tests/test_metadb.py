"""The metadata db's writer process and its group commit: writes queued together share one transaction,
each in a savepoint, and the new files of a group are synced once, before its commit.

Writes are module-level functions (the writer process gets them by name). To make a group, a second
connection holds SQLite's write lock while the writes are queued: the writer waits for it in its
``BEGIN IMMEDIATE``, with the first write, and takes the others as one group after it."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lfsb.store.db import MetaDB, WriteConnection


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaDB]:
    db = MetaDB(tmp_path / "server.db")
    await db.open()
    await db.write(create_table)
    yield db
    await db.close()


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")


def insert(conn: sqlite3.Connection, v: int) -> int:
    """Insert ``v`` and return it."""
    conn.execute("INSERT INTO t VALUES (?)", (v,))
    return v


def insert_then_fail(conn: sqlite3.Connection, v: int) -> None:
    """Insert ``v``, then raise."""
    conn.execute("INSERT INTO t VALUES (?)", (v,))
    raise ValueError(f"write {v} failed")


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def writer_pid(conn: sqlite3.Connection) -> int:
    return os.getpid()


async def rows(meta: MetaDB) -> list[int]:
    return await meta.read(lambda c: [v for (v,) in c.execute("SELECT v FROM t ORDER BY v")])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (checked every millisecond; TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def grouped(meta: MetaDB, writes: list[Awaitable[Any]]) -> list[Any]:
    """Run ``writes`` (``meta.write(...)`` calls, not started yet) as one group."""
    blocker = sqlite3.connect(meta.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    received, taken = meta.write_counts()
    try:
        first = asyncio.ensure_future(meta.write(count))
        await until(lambda: meta.write_counts()[1] == taken + 1)  # taken: it waits for the lock
        tasks = [asyncio.ensure_future(w) for w in writes]
        await until(lambda: meta.write_counts()[0] == received + 1 + len(writes))  # all queued
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await asyncio.gather(first, return_exceptions=True)  # (its own group, unless the machine is very slow)
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_writes_run_in_another_process(meta: MetaDB) -> None:
    assert await meta.write(writer_pid) != os.getpid()


async def test_a_failing_write_rolls_back_only_itself(meta: MetaDB) -> None:
    results = await grouped(
        meta, [meta.write(insert, 1), meta.write(insert_then_fail, 2), meta.write(insert, 3)]
    )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError) and str(results[1]) == "write 2 failed"
    assert "in the metadata writer" in "".join(results[1].__notes__)  # where it was raised
    assert await rows(meta) == [1, 3]


async def test_later_writes_of_a_group_see_earlier_ones(meta: MetaDB) -> None:
    assert await grouped(meta, [meta.write(insert, 1), meta.write(insert, 2), meta.write(count)]) == [1, 2, 2]


def create_child_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE child (v INTEGER REFERENCES t (v) DEFERRABLE INITIALLY DEFERRED)")


def orphan(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO child VALUES (99)")


async def test_a_failed_commit_fails_the_whole_group(meta: MetaDB) -> None:
    """A deferred foreign key is checked at COMMIT: when it fails, nothing of the group is committed."""
    await meta.write(create_child_table)
    results = await grouped(meta, [meta.write(insert, 1), meta.write(orphan), meta.write(insert, 2)])
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert await rows(meta) == []
    assert await grouped(meta, [meta.write(insert, 4)]) == [4]  # the next group starts clean
    assert await rows(meta) == [4]


async def test_a_cancelled_caller_does_not_disturb_the_group(meta: MetaDB) -> None:
    blocker = sqlite3.connect(meta.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    received, _ = meta.write_counts()
    cancelled = asyncio.ensure_future(meta.write(insert, 1))
    kept = asyncio.ensure_future(meta.write(insert, 2))
    await until(lambda: meta.write_counts()[0] == received + 2)  # both sent and received
    cancelled.cancel()
    blocker.execute("COMMIT")
    blocker.close()
    assert await kept == 2
    assert cancelled.cancelled()
    assert await rows(meta) == [1, 2]  # the write itself still ran, as a submitted one always does


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


def raise_unpicklable(conn: sqlite3.Connection) -> None:
    raise UnpicklableError(1, 2)  # pickles, but cannot be rebuilt from its args


def return_cursor(conn: sqlite3.Connection) -> sqlite3.Cursor:
    return conn.execute("SELECT 1")


async def test_what_cannot_cross_processes_fails_only_its_write(meta: MetaDB) -> None:
    with pytest.raises(AttributeError, match="local object"):
        await meta.write(lambda c: None)  # a function the writer could not import: refused here
    with pytest.raises(RuntimeError, match=r"UnpicklableError: 1\+2"):
        await meta.write(raise_unpicklable)
    results = await grouped(meta, [meta.write(return_cursor), meta.write(insert, 5)])
    assert isinstance(results[0], RuntimeError) and "cannot be sent" in str(results[0])
    assert results[1] == 5 and await meta.write(insert, 6) == 6


class RecordingSync:
    """A ``sync_files`` for the writer process: appends each call (its paths, and the rows of ``t`` that
    another connection sees meanwhile) to ``log``, a line each; fails with ``EIO`` while ``fail`` exists."""

    def __init__(self, db: Path, log: Path, fail: Path) -> None:
        self.db, self.log, self.fail = db, log, fail

    def __call__(self, paths: list[Path]) -> None:
        probe = sqlite3.connect(self.db)
        try:
            seen = [v for (v,) in probe.execute("SELECT v FROM t")]
        finally:
            probe.close()
        with open(self.log, "a") as f:
            f.write(f"{[p.name for p in paths]} {seen}\n")
        if self.fail.exists():
            raise OSError(errno.EIO, "Input/output error")


def create_files(conn: WriteConnection, paths: list[Path], v: int) -> int:
    """Create ``paths`` and insert ``v`` (as ingestion does: files and the rows that refer to them)."""
    for path in paths:
        path.write_bytes(b"x")
        conn.created(path)
    return insert(conn, v)


def create_file_then_fail(conn: WriteConnection, path: Path) -> None:
    """Create and register ``path``, then fail (without removing it: a write's own failure is its own)."""
    path.write_bytes(b"x")
    conn.created(path)
    raise ValueError("failed after creating a file")


@pytest.fixture
async def syncing(tmp_path: Path) -> AsyncIterator[tuple[MetaDB, Path, Path]]:
    log, fail = tmp_path / "sync.log", tmp_path / "fail"
    meta = MetaDB(tmp_path / "server.db", sync_files=RecordingSync(tmp_path / "server.db", log, fail))
    await meta.open()
    await meta.write(create_table)
    yield meta, log, fail
    await meta.close()


async def test_new_files_are_synced_once_per_group_before_the_commit(
    syncing: tuple[MetaDB, Path, Path], tmp_path: Path
) -> None:
    """The files created by the writes that succeeded are synced in one call, while nothing is committed
    yet."""
    meta, log, _ = syncing
    writes = [
        meta.write(create_files, [tmp_path / "a"], 1),
        meta.write(create_file_then_fail, tmp_path / "b"),
        meta.write(insert, 3),
        meta.write(create_files, [tmp_path / "c", tmp_path / "d"], 4),
    ]
    results = await grouped(meta, writes)
    assert results[0] == 1 and isinstance(results[1], ValueError) and results[2:] == [3, 4]
    assert log.read_text() == "['a', 'c', 'd'] []\n"  # one call, before the commit
    assert await rows(meta) == [1, 3, 4]
    assert await meta.write(insert, 5) == 5 and len(log.read_text().splitlines()) == 1  # no new files


async def test_a_failed_sync_fails_the_whole_group_and_removes_its_new_files(
    syncing: tuple[MetaDB, Path, Path], tmp_path: Path
) -> None:
    """When the new files cannot be made durable, nothing of the group is committed, and the new files
    of its writes are removed (with their directory, once empty)."""
    meta, _, fail = syncing
    fail.touch()
    new = tmp_path / "db" / "1.ltx"
    new.parent.mkdir()
    results = await grouped(meta, [meta.write(create_files, [new], 1), meta.write(insert, 2)])
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results), results
    assert await rows(meta) == []
    assert not new.parent.exists()
    fail.unlink()
    new.parent.mkdir()
    assert await meta.write(create_files, [new], 3) == 3
    assert await rows(meta) == [3] and new.exists()


async def test_close_finishes_the_queued_writes(meta: MetaDB) -> None:
    tasks = [asyncio.ensure_future(meta.write(insert, v)) for v in range(10)]
    await asyncio.sleep(0)
    await meta.close()
    assert [await t for t in tasks] == list(range(10))
    with pytest.raises(RuntimeError, match="not open"):
        await meta.write(insert, 11)


def test_a_dead_writer_takes_the_process_down(tmp_path: Path) -> None:
    """If the writer process dies, the process that uses it dies too, by SIGKILL (as in a crash), rather
    than going on without anywhere to commit."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from lfsb.store.db import MetaDB
        from tests.test_metadb import writer_pid

        async def main():
            meta = MetaDB({str(tmp_path / "server.db")!r})
            await meta.open()
            os.kill(await meta.write(writer_pid), signal.SIGKILL)
            await asyncio.sleep(30)

        asyncio.run(main())
        """
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "metadata writer process died" in result.stderr

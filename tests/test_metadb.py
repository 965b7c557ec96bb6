"""The metadata db's group commit: writes queued together share one transaction, each in a savepoint, and
the new files of a group are synced once, before its commit."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lfsb.store.db import MetaDB


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaDB]:
    db = MetaDB(tmp_path / "server.db")
    await db.open()
    await db.write(lambda c: c.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    yield db
    await db.close()


def insert(v: int) -> Callable[[sqlite3.Connection], int]:
    """A write that inserts ``v`` and returns it."""

    def _insert(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (v,))
        return v

    return _insert


def insert_then_fail(v: int) -> Callable[[sqlite3.Connection], None]:
    """A write that inserts ``v``, then raises."""

    def _fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?)", (v,))
        raise ValueError(f"write {v} failed")

    return _fail


async def rows(meta: MetaDB) -> list[int]:
    return await meta.read(lambda c: [v for (v,) in c.execute("SELECT v FROM t ORDER BY v")])


async def batched(meta: MetaDB, fns: list[Callable[[sqlite3.Connection], object]]) -> list[object]:
    """Run ``fns`` as one group: the writer thread is held until all of them are queued."""
    release = threading.Event()
    hold = asyncio.ensure_future(meta.write(lambda c: release.wait(10)))
    await asyncio.sleep(0.05)  # the holding write is running
    tasks = [asyncio.ensure_future(meta.write(fn)) for fn in fns]
    await asyncio.sleep(0.05)
    assert len(meta._queue) == len(fns)
    release.set()
    assert await hold is True
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_failing_write_rolls_back_only_itself(meta: MetaDB) -> None:
    results = await batched(meta, [insert(1), insert_then_fail(2), insert(3)])
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError) and str(results[1]) == "write 2 failed"
    assert await rows(meta) == [1, 3]


async def test_later_writes_of_a_group_see_earlier_ones(meta: MetaDB) -> None:
    def count(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]

    assert await batched(meta, [insert(1), insert(2), count]) == [1, 2, 2]


async def test_a_failed_commit_fails_the_whole_group(meta: MetaDB) -> None:
    """A deferred foreign key is checked at COMMIT: when it fails, nothing of the group is committed."""
    await meta.write(
        lambda c: c.execute("CREATE TABLE child (v INTEGER REFERENCES t (v) DEFERRABLE INITIALLY DEFERRED)")
    )

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO child VALUES (99)")

    results = await batched(meta, [insert(1), orphan, insert(2)])
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert await rows(meta) == []
    # The next group starts clean.
    assert await batched(meta, [insert(4)]) == [4]
    assert await rows(meta) == [4]


async def test_a_cancelled_caller_does_not_disturb_the_group(meta: MetaDB) -> None:
    release = threading.Event()
    hold = asyncio.ensure_future(meta.write(lambda c: release.wait(10)))
    await asyncio.sleep(0.05)
    cancelled = asyncio.ensure_future(meta.write(insert(1)))
    kept = asyncio.ensure_future(meta.write(insert(2)))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    release.set()
    await hold
    assert await kept == 2
    assert cancelled.cancelled()
    assert await rows(meta) == [1, 2]  # the write itself still ran, as a submitted one always did


async def test_new_files_are_synced_once_per_group_before_the_commit(tmp_path: Path) -> None:
    """The new files of the writes that succeeded are synced in one call, while nothing is committed yet."""
    calls: list[tuple[list[Path], list[int]]] = []

    def sync_files(paths: list[Path]) -> None:
        probe = sqlite3.connect(tmp_path / "server.db")
        try:
            calls.append((paths, [v for (v,) in probe.execute("SELECT v FROM t")]))
        finally:
            probe.close()

    meta = MetaDB(tmp_path / "server.db", sync_files=sync_files)
    await meta.open()
    try:
        await meta.write(lambda c: c.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
        release = threading.Event()
        hold = asyncio.ensure_future(meta.write(lambda c: release.wait(10)))
        await asyncio.sleep(0.05)
        writes = [
            meta.write(insert(1), new_files=[tmp_path / "a"]),
            meta.write(insert_then_fail(2), new_files=[tmp_path / "b"]),
            meta.write(insert(3)),
            meta.write(insert(4), new_files=[tmp_path / "c", tmp_path / "d"]),
        ]
        tasks = [asyncio.ensure_future(w) for w in writes]
        await asyncio.sleep(0.05)
        release.set()
        await hold
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == 1 and isinstance(results[1], ValueError) and results[2:] == [3, 4]
        assert calls == [([tmp_path / "a", tmp_path / "c", tmp_path / "d"], [])]  # before the commit
        assert await rows(meta) == [1, 3, 4]
        assert await meta.write(insert(5)) == 5 and len(calls) == 1  # no new files: no sync
    finally:
        await meta.close()


async def test_a_failed_sync_fails_the_whole_group(tmp_path: Path) -> None:
    """When the new files cannot be made durable, nothing of the group is committed."""
    failing = True

    def sync_files(paths: list[Path]) -> None:
        if failing:
            raise OSError(errno.EIO, "Input/output error")

    meta = MetaDB(tmp_path / "server.db", sync_files=sync_files)
    await meta.open()
    try:
        await meta.write(lambda c: c.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
        results = await asyncio.gather(
            meta.write(insert(1), new_files=[tmp_path / "a"]), meta.write(insert(2)), return_exceptions=True
        )
        assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results), results
        assert await rows(meta) == []
        failing = False
        assert await meta.write(insert(3), new_files=[tmp_path / "a"]) == 3
        assert await rows(meta) == [3]
    finally:
        await meta.close()

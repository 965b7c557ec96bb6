"""The metadata db's group commit: writes queued together share one transaction, each in a savepoint."""

from __future__ import annotations

import asyncio
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

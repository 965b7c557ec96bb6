"""Soft delete, undelete and purge.

A deleted database keeps its rows (position, page checksums, index, L0 files), renamed to
``<name>@<deleted_at>``: a name no client can use (``@`` is not allowed in names), so it leaves
``/pos``, listings and LiteFS's view at once, while a new database of the same name starts afresh
beside it (LiteFS re-sends a database it still has as a new one). Its objects move from
``<cluster>/<name>/`` to ``<cluster>/<name>@<deleted_at>/`` (a copy, then the originals removed), so
storage alone tells a deleted database from a live one and a recovery from storage keeps it deleted.
Undelete is the same move back, refused while a live database has the name. Purge removes everything;
a deleted database is purged by itself once ``LFSB_DELETE_GRACE`` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from ..errors import Kind, LfsbError, not_found_db
from ..storage import FileInfo
from .compaction import compact_level
from .db import now_ms
from .ingest import find_database
from .records import DATABASE_COLUMNS, Database
from .store import Store

log = logging.getLogger(__name__)

COPY_CONCURRENCY = 8
_DELETED = re.compile(r"(.+)@([0-9]{13,})")


def deleted_name(name: str, deleted_at: int) -> str:
    """The name a database deleted at ``deleted_at`` (ms) is kept under."""
    return f"{name}@{deleted_at}"


def parse_deleted_name(name: str) -> tuple[str, int] | None:
    """(original name, deletion time) of a deleted database's name; None for a live name."""
    m = _DELETED.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


# -- metadata writes --------------------------------------------------------------------------------
def rename_database(
    conn: sqlite3.Connection, db_id: int, name: str, deleted_at: int | None, moved_from: str
) -> None:
    """Give a database its new name and deletion time; ``moved_from`` is the prefix still to clear."""
    conn.execute(
        "UPDATE databases SET name = ?, deleted_at = ?, moved_from = ? WHERE id = ?",
        (name, deleted_at, moved_from, db_id),
    )


def moved(conn: sqlite3.Connection, db_id: int) -> None:
    """The move of a database is finished: its old prefix is clear."""
    conn.execute("UPDATE databases SET moved_from = NULL WHERE id = ?", (db_id,))


def _deleted_copies(conn: sqlite3.Connection, cluster: str, name: str | None) -> list[Database]:
    query = f"SELECT {DATABASE_COLUMNS} FROM databases WHERE cluster = ? AND deleted_at IS NOT NULL"
    rows = conn.execute(query + " ORDER BY deleted_at DESC, name", (cluster,)).fetchall()
    copies = [Database.from_row(r) for r in rows]
    return [d for d in copies if name is None or (parse_deleted_name(d.name) or ("",))[0] == name]


# -- moves ------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _work_locks(store: Store, cluster: str, *names: str) -> AsyncIterator[None]:
    """The ``work`` locks of several names of a cluster, taken in one order (no deadlock)."""
    async with contextlib.AsyncExitStack() as stack:
        for name in sorted(set(names)):
            await stack.enter_async_context(store.locks(cluster, name).work)
        yield


async def _list_objects(store: Store, cluster: str, name: str) -> list[FileInfo]:
    infos: list[FileInfo] = []
    for level in await store.objects.list_levels(cluster, name):
        infos += await store.objects.list_files(cluster, name, level)
    return infos


async def _copy_objects(store: Store, infos: list[FileInfo], name: str) -> None:
    sem = asyncio.Semaphore(COPY_CONCURRENCY)

    async def _one(info: FileInfo) -> None:
        async with sem:
            await store.objects.copy(info, name)

    await asyncio.gather(*(_one(i) for i in infos))


def _link_l0(old: Path, new: Path) -> None:
    """Hard-link the L0 files of ``old`` into ``new`` (crash-safe: both stay valid until the rename of
    the row commits; the unreferenced ones are removed at the next start)."""
    if not old.is_dir():
        return
    new.mkdir(parents=True, exist_ok=True)
    for path in old.iterdir():
        target = new / path.name
        target.unlink(missing_ok=True)
        os.link(path, target)
    fd = os.open(new, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _move(store: Store, db: Database, name: str, deleted_at: int | None) -> Database:
    """Move ``db`` (its objects, L0 files and rows) to ``name``. The caller holds the work locks of both
    names and the files lock of ``name``. Copies first, then renames the row, then removes the
    originals: a crash leaves the old state with spare copies, or the new one with ``moved_from`` set
    (finished by :func:`finish_moves` at the next start)."""
    cluster = db.cluster
    infos = await _list_objects(store, cluster, db.name)
    await _copy_objects(store, infos, name)
    old_l0, new_l0 = store.l0_dir / cluster / db.name, store.l0_dir / cluster / name
    async with store.locks(cluster, db.name).files:  # no write to db.name meanwhile
        await asyncio.to_thread(_link_l0, old_l0, new_l0)
        await store.meta.write(rename_database, db.id, name, deleted_at, db.name)
        await asyncio.to_thread(shutil.rmtree, old_l0, True)
    await store.objects.delete(infos)
    await store.meta.write(moved, db.id)
    return await store.database(cluster, name)


async def soft_delete(store: Store, cluster: str, name: str) -> Database:
    """Delete a database, recoverable with :func:`undelete` for ``LFSB_DELETE_GRACE``: its L0 files
    are uploaded first (every acknowledged transaction is in storage), then it moves aside."""
    deleted_at = now_ms()
    new_name = deleted_name(name, deleted_at)
    async with _work_locks(store, cluster, name, new_name), store.locks(cluster, new_name).files:
        db = await store.database(cluster, name)
        await compact_level(store, db, 1)
        deleted = await _move(store, db, new_name, deleted_at)
    log.info(
        "database deleted cluster=%s database=%s txid=%016x recoverable_until=%d",
        cluster,
        name,
        deleted.txid,
        deleted_at + int(store.config.delete_grace * 1000),
    )
    return deleted


async def undelete(store: Store, cluster: str, name: str) -> Database:
    """Bring back the newest deleted copy of ``name`` with its whole history; 409 ``EEXIST`` while a
    live database has the name (delete or purge it first), 404 ``ENODB`` if there is no deleted copy.
    Writes to ``name`` wait until it is back."""
    copies = await store.meta.read(lambda c: _deleted_copies(c, cluster, name))
    if not copies:
        raise LfsbError(Kind.NOT_FOUND, "ENODB", "no deleted database of that name")
    async with _work_locks(store, cluster, name, copies[0].name), store.locks(cluster, name).files:
        if await store.meta.read(lambda c: find_database(c, cluster, name)) is not None:
            raise LfsbError(
                Kind.CONFLICT,
                "EEXIST",
                f"a database named {name!r} exists: delete it (or purge it) before undeleting",
            )
        copy = await store.database(cluster, copies[0].name)  # purged meanwhile: 404
        db = await _move(store, copy, name, None)
    log.info("database undeleted cluster=%s database=%s txid=%016x", cluster, name, db.txid)
    return db


async def deleted_databases(store: Store, cluster: str) -> list[Database]:
    """The deleted databases of a cluster, newest deletion first."""
    return await store.meta.read(lambda c: _deleted_copies(c, cluster, None))


async def purge(store: Store, cluster: str, name: str) -> int:
    """Remove ``name`` (live) and every deleted copy of it for good; how many were removed (404
    ``ENODB`` if none)."""
    copies = await store.meta.read(lambda c: _deleted_copies(c, cluster, name))
    live = await store.meta.read(lambda c: find_database(c, cluster, name))
    removed = 0
    for db in ([live] if live else []) + copies:
        try:
            await store.delete_database(cluster, db.name)
            removed += 1
        except LfsbError as e:
            if e.code != "ENODB":  # removed meanwhile
                raise
    if not removed:
        raise not_found_db()
    log.info("database purged cluster=%s database=%s copies=%d", cluster, name, removed)
    return removed


async def purge_expired(store: Store) -> int:
    """Purge the deleted databases whose grace period is over; how many."""
    limit = now_ms() - int(store.config.delete_grace * 1000)
    expired = await store.meta.read(
        lambda c: c.execute(
            "SELECT cluster, name FROM databases WHERE deleted_at IS NOT NULL AND deleted_at <= ?", (limit,)
        ).fetchall()
    )
    for cluster, name in expired:
        with contextlib.suppress(LfsbError):  # purged meanwhile
            await store.delete_database(cluster, name)
            log.info("deleted database purged after its grace period cluster=%s database=%s", cluster, name)
    return len(expired)


async def purge_loop(store: Store) -> None:
    """Purge expired deleted databases, checking every tenth of the grace period (1 s to 1 h)."""
    interval = min(max(store.config.delete_grace / 10, 1.0), 3600.0)
    while True:
        await asyncio.sleep(interval)
        try:
            await purge_expired(store)
        except Exception:
            log.exception("purge of deleted databases failed")


async def finish_moves(store: Store) -> None:
    """At start: remove the originals of moves a crash interrupted after their rename (recorded in
    ``moved_from``); only the objects the moved database holds copies of. (Its old L0 files are
    unreferenced by then: :meth:`Store.open` removed them.)"""
    pending = await store.meta.read(
        lambda c: c.execute(
            "SELECT id, cluster, name, moved_from FROM databases WHERE moved_from IS NOT NULL"
        ).fetchall()
    )
    for db_id, cluster, name, old in pending:
        mine = {(i.level, i.min_txid, i.max_txid) for i in await _list_objects(store, cluster, name)}
        originals = await _list_objects(store, cluster, old)
        await store.objects.delete([i for i in originals if (i.level, i.min_txid, i.max_txid) in mine])
        await store.meta.write(moved, db_id)
        log.info("interrupted move finished cluster=%s database=%s from=%s", cluster, name, old)


def copies_by_name(names: Iterable[str]) -> dict[str, list[str]]:
    """The deleted copies among ``names`` (a cluster's), by the name they were deleted under."""
    copies: dict[str, list[str]] = {}
    for name in names:
        if (parsed := parse_deleted_name(name)) is not None:
            copies.setdefault(parsed[0], []).append(name)
    return copies


async def leftover_of_delete(
    store: Store, cluster: str, name: str, listing: dict[str, list[FileInfo]], copies: list[str]
) -> bool:
    """Recovery from storage alone: whether the objects of live ``name`` (in ``listing``, the cluster's)
    are all copies held by one of its deleted ``copies`` (a delete interrupted between its copy and the
    removal of the originals). They are then removed, so the deleted database stays deleted."""
    infos = listing[name]
    keys = {(i.level, i.min_txid, i.max_txid) for i in infos}
    for sibling in copies:
        if keys <= {(i.level, i.min_txid, i.max_txid) for i in listing[sibling]}:
            await store.objects.delete(infos)
            log.info("interrupted delete finished cluster=%s database=%s copy=%s", cluster, name, sibling)
            return True
    return False

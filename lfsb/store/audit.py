"""The audit log: every admin action, refused or done, in the metadata db and as a log line."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from .db import MetaDB

log = logging.getLogger(__name__)

AUDIT_COLUMNS = "time, token_id, remote, action, cluster, database, outcome, detail"


@dataclass(frozen=True)
class AuditEntry:
    """One admin action: when (ms since the epoch), by which token (``root``; None in open mode), from
    where, what, on which cluster and database, and how it ended (``ok`` or the error code)."""

    time: int
    token_id: str | None
    remote: str
    action: str
    cluster: str
    database: str
    outcome: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /audit`` lists it."""
        data = asdict(self)
        data["tokenId"] = data.pop("token_id")
        return data


def insert_entry(conn: sqlite3.Connection, entry: AuditEntry) -> None:
    """Add an entry (a metadata write)."""
    conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (entry.time, entry.token_id, entry.remote, entry.action, entry.cluster, entry.database,
         entry.outcome, entry.detail),
    )  # fmt: skip


async def record(meta: MetaDB, entry: AuditEntry) -> None:
    """Log ``entry`` and store it."""
    log.info(
        "audit action=%s outcome=%s cluster=%s database=%s token=%s remote=%s%s",
        entry.action,
        entry.outcome,
        entry.cluster,
        entry.database,
        entry.token_id or "-",
        entry.remote,
        f" detail={entry.detail}" if entry.detail else "",
    )
    await meta.write(insert_entry, entry)


async def entries(
    meta: MetaDB, cluster: str | None, since: int, limit: int, database: str | None = None
) -> list[AuditEntry]:
    """The newest ``limit`` entries at or after ``since`` of ``cluster`` (None: all), oldest first; only
    those of ``database`` if given."""
    query = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE time >= ?" + (" AND cluster = ?" if cluster else "")
    params: tuple[Any, ...] = (since, cluster) if cluster else (since,)
    if database is not None:
        query += " AND database = ?"
        params += (database,)
    rows = await meta.read(
        lambda c: c.execute(f"{query} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    )
    return [AuditEntry(*row) for row in reversed(rows)]

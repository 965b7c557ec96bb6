"""Rows of the metadata db as values: a database and its position, and one LTX file of any level."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..ltx import Pos, format_filename, format_timestamp, format_txid
from .db import from_sql

L0 = 0


@dataclass(frozen=True)
class Database:
    """A (cluster, database) and its current state."""

    id: int
    cluster: str
    name: str
    page_size: int
    commit: int
    txid: int
    checksum: int
    timestamp: int
    hwm: int
    deleted_at: int | None = None
    """When the database was deleted (ms since the epoch); None while it is live."""

    @property
    def pos(self) -> Pos:
        """The current position (TXID, post-apply checksum)."""
        return Pos(self.txid, self.checksum)

    @classmethod
    def from_row(cls, row: sqlite3.Row | tuple) -> Database:
        """From ``SELECT`` :data:`DATABASE_COLUMNS`."""
        id_, cluster, name, page_size, commit, txid, checksum, ts, hwm, deleted_at = row
        return cls(id_, cluster, name, page_size, commit, txid, from_sql(checksum), ts, hwm, deleted_at)


DATABASE_COLUMNS = 'id, cluster, name, page_size, "commit", txid, checksum, timestamp, hwm, deleted_at'


@dataclass(frozen=True)
class LTXFile:
    """One LTX file of a database at some level (0 = local L0, 1.. and 9 = object storage)."""

    level: int
    min_txid: int
    max_txid: int
    commit: int
    timestamp: int
    pre_apply_checksum: int
    post_apply_checksum: int
    size: int
    created_at: int

    @property
    def filename(self) -> str:
        """``<min>-<max>.ltx``."""
        return format_filename(self.min_txid, self.max_txid)

    @property
    def key(self) -> tuple[int, int, int]:
        """(level, min TXID, max TXID): what identifies a file (every snapshot starts at TXID 1)."""
        return (self.level, self.min_txid, self.max_txid)

    @property
    def is_snapshot(self) -> bool:
        """True when the file starts at TXID 1 (it holds the whole database)."""
        return self.min_txid == 1

    @property
    def post_apply_pos(self) -> Pos:
        """The position after applying this file."""
        return Pos(self.max_txid, self.post_apply_checksum)


L0_COLUMNS = (
    'min_txid, max_txid, "commit", timestamp, pre_apply_checksum, post_apply_checksum, size, created_at'
)
REMOTE_COLUMNS = "level, " + L0_COLUMNS


def l0_from_row(row: tuple) -> LTXFile:
    """From ``SELECT`` :data:`L0_COLUMNS` ``FROM l0_files``."""
    mn, mx, commit, ts, pre, post, size, created = row
    return LTXFile(L0, mn, mx, commit, ts, from_sql(pre), from_sql(post), size, created)


def remote_from_row(row: tuple) -> LTXFile:
    """From ``SELECT`` :data:`REMOTE_COLUMNS` ``FROM remote_files``."""
    level, mn, mx, commit, ts, pre, post, size, created = row
    return LTXFile(level, mn, mx, commit, ts, from_sql(pre), from_sql(post), size, created)


@dataclass(frozen=True)
class CheckRecord:
    """One restore check of a database: when it ended, the point, what it cost and its outcome."""

    checked_at: int
    """Milliseconds since the epoch."""
    txid: int
    """The point checked (0 when no point could be planned from object storage)."""
    duration_ms: int
    bytes_read: int
    """Bytes of LTX files read from object storage."""
    db_bytes: int
    """Size of the rebuilt SQLite file."""
    ok: bool
    message: str
    scheduled: bool

    def to_json(self) -> dict[str, object]:
        """The record as the API returns it (TXID in hex, time in RFC 3339)."""
        return {
            "checkedAt": format_timestamp(self.checked_at),
            "txID": format_txid(self.txid),
            "durationMs": self.duration_ms,
            "bytesRead": self.bytes_read,
            "dbBytes": self.db_bytes,
            "ok": self.ok,
            "message": self.message,
            "scheduled": self.scheduled,
        }


CHECK_COLUMNS = "checked_at, txid, duration_ms, bytes_read, db_bytes, ok, message, scheduled"


def check_from_row(row: tuple) -> CheckRecord:
    """From ``SELECT`` :data:`CHECK_COLUMNS` ``FROM restore_checks``."""
    at, txid, duration, read, size, ok, message, scheduled = row
    return CheckRecord(at, txid, duration, read, size, bool(ok), message, bool(scheduled))

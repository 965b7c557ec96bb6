"""Snapshots and raw SQLite database files: one into the other, and the database checksum."""

from __future__ import annotations

import os
import time
from typing import BinaryIO, NamedTuple

from .checksum import EMPTY_DB_CHECKSUM, FLAG, lock_pgno, page_checksum
from .decoder import Decoder
from .encoder import Encoder
from .errors import LTXError
from .header import FLAG_COMPRESS_LZ4, Header, Trailer
from .lz4frame import read_exact

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_SIZE = 100
_WRITE_BATCH = 256 * 1024


class SQLiteHeader(NamedTuple):
    """The two facts of a SQLite file header that LTX needs."""

    page_size: int
    page_count: int


def parse_sqlite_header(data: bytes) -> SQLiteHeader:
    """Page size (offset 16, where 1 means 65536) and page count (offset 28) of a SQLite header."""
    if len(data) < SQLITE_HEADER_SIZE or not data.startswith(SQLITE_MAGIC):
        raise LTXError("invalid database header")
    page_size = int.from_bytes(data[16:18], "big")
    if page_size == 1:
        page_size = 65536
    if page_size < 512 or page_size & (page_size - 1):
        raise LTXError(f"invalid database header: page size {page_size}")
    return SQLiteHeader(page_size, int.from_bytes(data[28:32], "big"))


def read_sqlite_header(f: BinaryIO, size: int) -> SQLiteHeader:
    """Read the header at the start of ``f`` (``size`` bytes long) and check it against the size."""
    try:
        head = read_exact(f, SQLITE_HEADER_SIZE)
    except LTXError:
        raise LTXError("invalid database header") from None
    header = parse_sqlite_header(head)
    if size % header.page_size:
        raise LTXError(
            f"invalid database header: size {size} is not a multiple of page size {header.page_size}"
        )
    if header.page_count * header.page_size != size:
        raise LTXError(
            f"invalid database header: {header.page_count} pages of {header.page_size} bytes "
            f"in the header but {size} bytes of data"
        )
    return header


def decode_database(f: BinaryIO, out: BinaryIO) -> tuple[Header, Trailer]:
    """Write the SQLite file a snapshot holds (``DecodeDatabaseTo``): lock page as zeros."""
    dec = Decoder(f)
    header = dec.read_header()
    if not header.is_snapshot:
        raise LTXError("cannot decode non-snapshot LTX file to SQLite database")
    lock = header.lock_pgno
    zeros = bytes(header.page_size)
    read_page = dec.read_page
    batch: list[bytes | memoryview] = []  # pages are written in batches: fewer, larger writes
    batch_pages = max(1, _WRITE_BATCH // header.page_size)
    for pgno in range(1, header.commit + 1):
        if pgno == lock:
            batch.append(zeros)
        else:
            try:
                page = read_page()
            except LTXError as e:
                raise e.at(f"decode page {pgno}") from None
            if page is None:
                raise LTXError("EOF", f"decode page {pgno}")
            if page[0] != pgno:
                raise LTXError(
                    f"unexpected pgno while decoding page: read {page[0]}, expected {pgno}",
                    f"decode page {pgno}",
                )
            batch.append(page[1][4:])
        if len(batch) == batch_pages:
            out.write(b"".join(batch))
            batch.clear()
    if batch:
        out.write(b"".join(batch))
    page = dec.read_page()
    if page is not None:
        raise LTXError(f"unexpected page {page[0]} after commit {header.commit}")
    try:
        trailer = dec.close()
    except LTXError as e:
        raise LTXError(e.detail, "close decoder") from None
    return header, trailer


def encode_database(
    db: BinaryIO,
    out: BinaryIO,
    compress: bool = True,
    txid: int = 1,
    timestamp: int | None = None,
) -> tuple[Header, Trailer]:
    """Write a snapshot (TXIDs 1..``txid``) of the SQLite file ``db``, checking its header."""
    size = os.fstat(db.fileno()).st_size
    sqlite_header = read_sqlite_header(db, size)
    db.seek(0)
    header = Header(
        page_size=sqlite_header.page_size,
        commit=sqlite_header.page_count,
        min_txid=1,
        max_txid=txid,
        flags=FLAG_COMPRESS_LZ4 if compress else 0,
        timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
    )
    enc = Encoder(out, header)
    page_size, lock = header.page_size, header.lock_pgno
    for pgno in range(1, header.commit + 1):
        data = read_exact(db, page_size)
        if pgno != lock:
            enc.write_page(pgno, data)
    return header, enc.close()


def database_checksum(db: BinaryIO, page_size: int, page_count: int | None = None) -> int:
    """The LTX database checksum of a raw database file (lock page excluded; empty is FLAG)."""
    acc = EMPTY_DB_CHECKSUM
    lock = lock_pgno(page_size)
    pgno = 0
    while page_count is None or pgno < page_count:
        data = db.read(page_size)
        if not data:
            break
        if len(data) != page_size:
            raise LTXError(f"database size is not a multiple of page size {page_size}")
        pgno += 1
        if pgno != lock:
            acc ^= page_checksum(pgno, data)
    return FLAG | acc


def diff_database(db: BinaryIO, page_size: int, page_checksums: list[int]) -> list[tuple[int, bytes]]:
    """The pages of a raw database file that changed since ``page_checksums`` was taken.

    ``page_checksums[pgno - 1]`` is the known checksum of each page (the lock page's is 0); the
    list is updated in place to the file's current state, including shrinking or growing with
    it. Returns ``(pgno, data)`` for every page that is new or different, in page order.
    """
    lock = lock_pgno(page_size)
    changed = []
    pgno = 0
    db.seek(0)
    while data := db.read(page_size):
        if len(data) != page_size:
            raise LTXError(f"database size is not a multiple of page size {page_size}")
        pgno += 1
        checksum = 0 if pgno == lock else page_checksum(pgno, data)
        if pgno > len(page_checksums):
            page_checksums.append(checksum)
        elif page_checksums[pgno - 1] == checksum:
            continue
        else:
            page_checksums[pgno - 1] = checksum
        if pgno != lock:
            changed.append((pgno, data))
    del page_checksums[pgno:]
    return changed

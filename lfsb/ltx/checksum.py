"""CRC-64/GO-ISO checksums of LTX: page, database and file checksums, and the lock page rule."""

from __future__ import annotations

import struct

from fastcrc import crc64

FLAG = 1 << 63
"""Bit 63, set on every LTX checksum (an empty database's checksum is exactly this value)."""

EMPTY_DB_CHECKSUM = FLAG

Buffer = bytes | bytearray | memoryview

_go_iso = crc64.go_iso
_PGNO = struct.Struct(">I")


def crc64_update(data: Buffer, crc: int | None = None) -> int:
    """CRC-64/GO-ISO of ``data``, continuing from ``crc`` (the result of a previous call)."""
    if crc is None:
        return _go_iso(data)
    return _go_iso(data, crc)


def page_checksum(pgno: int, data: Buffer) -> int:
    """Checksum of one page: ``FLAG | crc64(be32(pgno) || data)``."""
    return FLAG | _go_iso(data, _go_iso(_PGNO.pack(pgno)))


def frame_checksum(frame: Buffer) -> int:
    """Checksum of a page frame already laid out as ``be32(pgno) || data``."""
    return FLAG | _go_iso(frame)


def lock_pgno(page_size: int) -> int:
    """The SQLite lock page for ``page_size``: never stored in LTX, excluded from checksums."""
    return 0x40000000 // page_size + 1


def fold(acc: int, checksum: int) -> int:
    """Add (or remove: XOR is its own inverse) one page checksum to a database checksum."""
    return FLAG | (acc ^ checksum)

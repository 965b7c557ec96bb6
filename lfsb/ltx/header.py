"""The 100-byte LTX header and the 16-byte trailer: fields, byte layout and validation."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from .checksum import FLAG, lock_pgno
from .errors import LTXError
from .text import format_filename, format_timestamp

MAGIC = b"LTX1"
HEADER_SIZE = 100
TRAILER_SIZE = 16
PAGE_HEADER_SIZE = 4
FLAG_COMPRESS_LZ4 = 0x1
VALID_FLAGS = FLAG_COMPRESS_LZ4
PAGE_SIZES = frozenset(1 << n for n in range(9, 17))

_HEADER = struct.Struct(">4sIIIQQqQqqIIQ20x")
_TRAILER = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class Header:
    """The LTX header (ltx-format.md §2). Integers are the on-disk values."""

    page_size: int
    commit: int
    min_txid: int
    max_txid: int
    flags: int = 0
    timestamp: int = 0
    pre_apply_checksum: int = 0
    wal_offset: int = 0
    wal_size: int = 0
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        """A snapshot holds the whole database: its min TXID is 1."""
        return self.min_txid == 1

    @property
    def compressed(self) -> bool:
        """True when the page block is one LZ4 frame."""
        return bool(self.flags & FLAG_COMPRESS_LZ4)

    @property
    def lock_pgno(self) -> int:
        """The lock page for this file's page size."""
        return lock_pgno(self.page_size)

    @property
    def filename(self) -> str:
        """``<min>-<max>.ltx``."""
        return format_filename(self.min_txid, self.max_txid)

    def with_flags(self, flags: int) -> Header:
        """A copy with other flags (e.g. compressed or not)."""
        return replace(self, flags=flags)

    def validate(self) -> None:
        """Raise :class:`LTXError` with the reference's message on the first rule broken (§2.1)."""
        if self.flags & ~VALID_FLAGS:
            raise LTXError(f"invalid flags: 0x{self.flags:08x}")
        if self.page_size not in PAGE_SIZES:
            raise LTXError(f"invalid page size: {self.page_size}")
        if self.min_txid == 0:
            raise LTXError("minimum transaction id required")
        if self.max_txid == 0:
            raise LTXError("maximum transaction id required")
        if self.min_txid > self.max_txid:
            raise LTXError(f"transaction ids out of order: ({self.min_txid},{self.max_txid})")
        if self.wal_offset < 0:
            raise LTXError(f"wal offset cannot be negative: {self.wal_offset}")
        if self.wal_size < 0:
            raise LTXError(f"wal size cannot be negative: {self.wal_size}")
        salted = self.wal_salt1 != 0 or self.wal_salt2 != 0
        if salted and self.wal_offset == 0:
            raise LTXError("wal offset required if salt exists")
        if salted and self.wal_size == 0:
            raise LTXError("wal size required if salt exists")
        if self.wal_offset != 0 and self.wal_size == 0:
            raise LTXError("wal size required if wal offset exists")
        if self.wal_offset == 0 and self.wal_size != 0:
            raise LTXError("wal offset required if wal size exists")
        if self.is_snapshot:
            if self.pre_apply_checksum != 0:
                raise LTXError("pre-apply checksum must be zero on snapshots")
        elif self.pre_apply_checksum == 0:
            raise LTXError("pre-apply checksum required on non-snapshot files")
        elif not self.pre_apply_checksum & FLAG:
            raise LTXError("invalid pre-apply checksum format")

    def to_bytes(self) -> bytes:
        """The 100-byte on-disk form (reserved bytes zero)."""
        return _HEADER.pack(
            MAGIC,
            self.flags,
            self.page_size,
            self.commit,
            self.min_txid,
            self.max_txid,
            self.timestamp,
            self.pre_apply_checksum,
            self.wal_offset,
            self.wal_size,
            self.wal_salt1,
            self.wal_salt2,
            self.node_id,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse 100 bytes; a wrong magic is ``unmarshal header: invalid LTX file``. No validation."""
        (magic, flags, page_size, commit, min_txid, max_txid, ts, pre, wal_off, wal_size, s1, s2,
         node_id) = _HEADER.unpack(data)  # fmt: skip
        if magic != MAGIC:
            raise LTXError("unmarshal header: invalid LTX file")
        return cls(
            page_size=page_size,
            commit=commit,
            min_txid=min_txid,
            max_txid=max_txid,
            flags=flags,
            timestamp=ts,
            pre_apply_checksum=pre,
            wal_offset=wal_off,
            wal_size=wal_size,
            wal_salt1=s1,
            wal_salt2=s2,
            node_id=node_id,
        )

    def to_json(self) -> dict[str, object]:
        """The manifest's JSON form: TXIDs and checksums as 16 hex digits, timestamp in ms."""
        return {
            "flags": self.flags,
            "page_size": self.page_size,
            "commit": self.commit,
            "min_txid": f"{self.min_txid:016x}",
            "max_txid": f"{self.max_txid:016x}",
            "timestamp": self.timestamp,
            "pre_apply_checksum": f"{self.pre_apply_checksum:016x}",
            "wal_offset": self.wal_offset,
            "wal_size": self.wal_size,
            "wal_salt1": self.wal_salt1,
            "wal_salt2": self.wal_salt2,
            "node_id": self.node_id,
        }

    @property
    def timestamp_text(self) -> str:
        """The timestamp as ``2023-11-14T22:13:20.123Z``."""
        return format_timestamp(self.timestamp)


@dataclass(frozen=True, slots=True)
class Trailer:
    """The 16-byte trailer: the database checksum after applying the file, and the file checksum."""

    post_apply_checksum: int
    file_checksum: int

    def to_bytes(self) -> bytes:
        """The 16-byte on-disk form."""
        return _TRAILER.pack(self.post_apply_checksum, self.file_checksum)

    @classmethod
    def from_bytes(cls, data: bytes) -> Trailer:
        """Parse 16 bytes."""
        return cls(*_TRAILER.unpack(data))

    def to_json(self) -> dict[str, str]:
        """The manifest's JSON form."""
        return {
            "post_apply_checksum": f"{self.post_apply_checksum:016x}",
            "file_checksum": f"{self.file_checksum:016x}",
        }

    def validate(self, commit: int) -> None:
        """The encoder's trailer rules (§4); the decoder does not run them."""
        if self.post_apply_checksum == 0:
            raise LTXError("post-apply checksum required")
        if not self.post_apply_checksum & FLAG:
            raise LTXError("invalid post-apply checksum format")
        if commit == 0 and self.post_apply_checksum != FLAG:
            raise LTXError("post-apply checksum must be empty for zero-length database")

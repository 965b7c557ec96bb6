"""Streaming LTX encoder, plain or LZ4, enforcing the reference encoder's rules (sections 3 and 4)."""

from __future__ import annotations

import struct
from typing import BinaryIO

from .checksum import EMPTY_DB_CHECKSUM, FLAG, crc64_update
from .errors import LTXError
from .header import PAGE_HEADER_SIZE, Header, Trailer
from .lz4frame import BLOCK_SIZE, FrameWriter

_PGNO = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_END_MARKER = b"\x00\x00\x00\x00"


class Encoder:
    """Writes one LTX file to ``f``: the header at once, pages in order, then :meth:`close`.

    For snapshots the post-apply checksum is computed from the pages written
    (:attr:`snapshot_checksum`); other files take theirs from the caller.
    """

    def __init__(self, f: BinaryIO, header: Header) -> None:
        header.validate()
        self.header = header
        self._f = f
        raw = header.to_bytes()
        f.write(raw)
        self._crc = crc64_update(raw)
        self._lz4 = FrameWriter(f) if header.compressed else None
        self._pending = bytearray()
        self._prev_pgno = 0
        self._snapshot = header.is_snapshot
        self._lock_pgno = header.lock_pgno
        self._commit = header.commit
        self._frame_size = PAGE_HEADER_SIZE + header.page_size
        self.snapshot_checksum = EMPTY_DB_CHECKSUM
        self.pages_written = 0

    def write_page(self, pgno: int, data: bytes | bytearray | memoryview) -> None:
        """Append one page (``page_size`` bytes)."""
        if len(data) != self.header.page_size:
            raise LTXError(f"invalid page buffer size: {len(data)}, expecting {self.header.page_size}")
        self._check_pgno(pgno)
        start = len(self._pending)
        self._pending += _PGNO.pack(pgno)
        self._pending += data
        self._added(pgno, start)

    def write_frame(self, pgno: int, frame: bytes | bytearray | memoryview) -> None:
        """Append a page frame already laid out as ``be32(pgno) || data`` (as the decoder gives)."""
        if len(frame) != self._frame_size:
            raise LTXError(
                f"invalid page buffer size: {len(frame) - PAGE_HEADER_SIZE}, "
                f"expecting {self.header.page_size}"
            )
        self._check_pgno(pgno)
        start = len(self._pending)
        self._pending += frame
        self._added(pgno, start)

    def _check_pgno(self, pgno: int) -> None:
        prev = self._prev_pgno
        if pgno == 0:
            raise LTXError("page number required")
        if pgno > self._commit:
            raise LTXError(f"page number {pgno} out-of-bounds for commit size {self._commit}")
        if pgno == self._lock_pgno:
            raise LTXError(f"cannot encode lock page: pgno={pgno}")
        if self._snapshot:
            if prev == 0:
                if pgno != 1:
                    raise LTXError("snapshot transaction file must start with page number 1")
            elif prev + 1 == self._lock_pgno:
                if pgno != prev + 2:
                    raise LTXError(
                        f"nonsequential page numbers in snapshot transaction (skip lock page): {prev},{pgno}"
                    )
            elif pgno != prev + 1:
                raise LTXError(f"nonsequential page numbers in snapshot transaction: {prev},{pgno}")
        elif pgno <= prev:
            raise LTXError(f"out-of-order page numbers: {prev},{pgno}")

    def _added(self, pgno: int, start: int) -> None:
        self._prev_pgno = pgno
        self.pages_written += 1
        if self._snapshot:
            frame = memoryview(self._pending)[start:]
            self.snapshot_checksum ^= crc64_update(frame)
            frame.release()
        if len(self._pending) >= BLOCK_SIZE:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        pending = self._pending
        n = len(pending) if final else len(pending) - len(pending) % BLOCK_SIZE
        if n == 0:
            return
        with memoryview(pending) as mv:
            self._crc = crc64_update(mv[:n], self._crc)
            if self._lz4 is None:
                self._f.write(mv[:n])
            else:
                for off in range(0, n, BLOCK_SIZE):
                    self._lz4.write_block(mv[off : min(off + BLOCK_SIZE, n)])
        del pending[:n]

    def close(self, post_apply_checksum: int | None = None) -> Trailer:
        """Finish the file. ``post_apply_checksum`` defaults to the computed one for snapshots."""
        if post_apply_checksum is None:
            if not self._snapshot:
                raise LTXError("post-apply checksum required")
            post_apply_checksum = FLAG | self.snapshot_checksum
        self._pending += _END_MARKER
        self._flush(final=True)
        if self._lz4 is not None:
            self._lz4.close()
        post = _U64.pack(post_apply_checksum)
        trailer = Trailer(post_apply_checksum, FLAG | crc64_update(post, self._crc))
        trailer.validate(self._commit)
        self._f.write(trailer.to_bytes())
        return trailer

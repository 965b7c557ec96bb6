"""Streaming LTX encoder, plain or LZ4, enforcing the reference encoder's rules (sections 3 and 4)."""

from __future__ import annotations

import struct
from typing import BinaryIO

from fastcrc import crc64

from .checksum import EMPTY_DB_CHECKSUM, FLAG, crc64_update
from .errors import LTXError
from .header import PAGE_HEADER_SIZE, Header, Trailer
from .lz4frame import BLOCK_SIZE, FrameWriter

_PGNO = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_END_MARKER = b"\x00\x00\x00\x00"
_go_iso = crc64.go_iso


class Encoder:
    """Writes one LTX file to ``f``: the header at once, pages in order, then :meth:`close`.

    For snapshots the post-apply checksum is computed from the pages written
    (:attr:`snapshot_checksum`); other files take theirs from the caller.
    """

    def __init__(self, f: BinaryIO, header: Header, sum_pages: bool = True) -> None:
        """``sum_pages=False``: the post-apply checksum is given to :meth:`close`, so a snapshot's pages
        are not summed for it."""
        header.validate()
        self.header = header
        self._f = f
        raw = header.to_bytes()
        f.write(raw)
        self._crc = crc64_update(raw)
        self._lz4 = FrameWriter(f) if header.compressed else None
        # The page block is copied into one fixed block buffer, written out each time it fills up
        # (a growing and shrinking bytearray would be moved by realloc again and again).
        self._block = memoryview(bytearray(BLOCK_SIZE))
        self._used = 0
        self._prev_pgno = 0
        self._snapshot = header.is_snapshot
        self._sum_pages = self._snapshot and sum_pages
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
        head = _PGNO.pack(pgno)
        self._append(head)
        self._append(data)
        self._prev_pgno = pgno
        self.pages_written += 1
        if self._sum_pages:
            self.snapshot_checksum ^= _go_iso(data, _go_iso(head))

    def write_frame(self, pgno: int, frame: bytes | bytearray | memoryview) -> None:
        """Append a page frame already laid out as ``be32(pgno) || data`` (as the decoder gives)."""
        if len(frame) != self._frame_size:
            raise LTXError(
                f"invalid page buffer size: {len(frame) - PAGE_HEADER_SIZE}, "
                f"expecting {self.header.page_size}"
            )
        prev = self._prev_pgno
        # Only a page that does not simply follow on needs the full rule check.
        if (
            (pgno != prev + 1 if self._snapshot else pgno <= prev)
            or pgno > self._commit
            or pgno == self._lock_pgno
        ):
            self._check_pgno(pgno)
        self._append(frame)
        self._prev_pgno = pgno
        self.pages_written += 1
        if self._sum_pages:
            self.snapshot_checksum ^= _go_iso(frame)

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

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the block buffer, writing out every block that fills up."""
        used = self._used
        n = len(data)
        if used + n < BLOCK_SIZE:
            self._block[used : used + n] = data
            self._used = used + n
            return
        block = self._block
        done = 0
        while done < n:
            take = min(BLOCK_SIZE - used, n - done)
            block[used : used + take] = data[done : done + take]
            used += take
            done += take
            if used == BLOCK_SIZE:
                self._write_block(block)
                used = 0
        self._used = used

    def _write_block(self, data: memoryview) -> None:
        # The file object must be done with ``data`` when write returns: the buffer is reused.
        self._crc = _go_iso(data, self._crc)
        if self._lz4 is None:
            self._f.write(data)
        else:
            self._lz4.write_block(data)

    def close(self, post_apply_checksum: int | None = None) -> Trailer:
        """Finish the file. ``post_apply_checksum`` defaults to the computed one for snapshots."""
        if post_apply_checksum is None:
            if not self._sum_pages:
                raise LTXError("post-apply checksum required")
            post_apply_checksum = FLAG | self.snapshot_checksum
        self._append(_END_MARKER)
        if self._used:
            self._write_block(self._block[: self._used])
        if self._lz4 is not None:
            self._lz4.close()
        post = _U64.pack(post_apply_checksum)
        trailer = Trailer(post_apply_checksum, FLAG | crc64_update(post, self._crc))
        trailer.validate(self._commit)
        self._f.write(trailer.to_bytes())
        return trailer

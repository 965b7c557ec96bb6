"""Streaming LTX decoder: header, then pages one by one, then the trailer with every check.

Reads from any binary file object and holds at most one LZ4 block (or about 64 KiB of a plain file)
at a time, plus a copy of one page frame when a frame spans two blocks. Errors read exactly like
the Go reference's ``Verify`` (``decode header: …``, ``decode page N: …``, ``close reader: …``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from fastcrc import crc64

from .checksum import EMPTY_DB_CHECKSUM, FLAG, crc64_update
from .errors import CleanEOF, LTXError, PostApplyMismatch, UnexpectedEOF
from .header import HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE, Header, Trailer
from .lz4frame import FrameReader, read_exact

_RAW_CHUNK = 64 * 1024
_PGNO = struct.Struct(">I")
_unpack_pgno = _PGNO.unpack_from
_go_iso = crc64.go_iso


class Decoder:
    """Decodes one LTX file from ``f``; call :meth:`read_header`, :meth:`read_page` until None, :meth:`close`.

    Pages come back as ``(pgno, frame)`` where ``frame`` is a memoryview of ``be32(pgno) || data``
    (the logical page frame, which is also what the page checksum hashes); ``frame[4:]`` is the
    page. A frame stays valid after later reads. ``trusted`` and ``checksums`` are for files lfsb wrote
    itself or already verified: see :class:`~lfsb.ltx.lz4frame.FrameReader`; with ``checksums=False`` a
    snapshot's post-apply checksum is not recomputed from its pages either (the file checksum is still
    checked).
    """

    def __init__(self, f: BinaryIO, *, trusted: bool = False, checksums: bool = True) -> None:
        self._f = f
        self._trusted = trusted
        self._checksums = checksums
        self.header: Header | None = None
        self._frames_read = 0
        self._crc: int | None = None
        self._buf = memoryview(b"")  # the current block (or a bridge over two, see _fill)
        self._next: memoryview | None = None  # the rest of a block whose head went into a bridge
        self._pos = 0
        self._hashed = 0
        self._frame_size = 0
        self._lz4: FrameReader | None = None
        self._ended = False  # end marker seen
        self._eof = False  # input ended where a page header should start
        self._snapshot_checksum = EMPTY_DB_CHECKSUM
        self._lock_pgno = 0
        self._is_snapshot = False
        self._surplus = False  # bytes past the trailer already read from the input

    # -- header ---------------------------------------------------------------------------------
    def read_header(self) -> Header:
        """Read and validate the 100-byte header."""
        try:
            raw = read_exact(self._f, HEADER_SIZE)
            header = Header.from_bytes(raw)
            header.validate()
        except LTXError as e:
            raise e.at("decode header") from None
        self.header = header
        self._crc = crc64_update(raw)
        self._frame_size = PAGE_HEADER_SIZE + header.page_size
        self._raw_chunk = max(1, _RAW_CHUNK // self._frame_size) * self._frame_size
        self._lock_pgno = header.lock_pgno
        self._is_snapshot = header.is_snapshot and self._checksums  # whether pages are summed
        if header.compressed:
            self._lz4 = FrameReader(self._f, trusted=self._trusted, checksums=self._checksums)
        return header

    # -- pages ----------------------------------------------------------------------------------
    def _next_chunk(self) -> memoryview | None:
        if self._next is not None:
            chunk, self._next = self._next, None
            return chunk
        if self._lz4 is None:
            data = self._f.read(self._raw_chunk)
        elif data := self._lz4.read_block():
            # The frame holds exactly the page block: hash each block whole, while it is in the cache.
            self._crc = _go_iso(data, self._crc)
        return memoryview(data) if data else None

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes contiguous at ``_pos``; False on a clean end of the page block.

        Blocks are never copied: when the bytes span two of them, the part of the second one that
        is needed is copied after the first one's tail into a small bridge buffer, and the rest of
        the second one waits in ``_next``.
        """
        if self._lz4 is None:  # a plain chunk may run past the page block: hash what was consumed
            self._crc = crc64_update(self._buf[self._hashed : self._pos], self._crc)
        rest = self._buf[self._pos :]
        parts = [rest] if rest else []
        have = len(rest)
        while have < need:
            chunk = self._next_chunk()
            if chunk is None:
                if have == 0:
                    return False
                raise UnexpectedEOF()
            if have and len(chunk) > need - have:
                self._next = chunk[need - have :]
                chunk = chunk[: need - have]
            parts.append(chunk)
            have += len(chunk)
        self._buf = parts[0] if len(parts) == 1 else memoryview(b"".join(parts))
        self._pos = self._hashed = 0
        return True

    def read_page(self) -> tuple[int, memoryview] | None:
        """The next page frame as ``(pgno, frame)``, or None after the end marker."""
        if self._ended or self._eof:
            return None
        pos = self._pos
        end = pos + self._frame_size
        buf = self._buf
        if end > len(buf) or not (pgno := _unpack_pgno(buf, pos)[0]):
            located = self._locate_frame()
            if located is None:
                return None
            pgno, pos, end = located
            buf = self._buf
        self._pos = end
        frame = buf[pos:end]
        if self._is_snapshot and pgno != self._lock_pgno:
            self._snapshot_checksum ^= _go_iso(frame)
        self._frames_read += 1
        return pgno, frame

    def _locate_frame(self) -> tuple[int, int, int] | None:
        """:meth:`read_page` past its fast path: refill the buffer, or end the page block (None)."""
        try:
            if self._pos + PAGE_HEADER_SIZE > len(self._buf) and not self._fill(PAGE_HEADER_SIZE):
                self._eof = True
                return None
            pos = self._pos
            (pgno,) = _unpack_pgno(self._buf, pos)
            if pgno == 0:
                self._pos = pos + PAGE_HEADER_SIZE
                self._end_page_block()
                return None
            end = pos + self._frame_size
            if end > len(self._buf):
                if pos + PAGE_HEADER_SIZE == len(self._buf) and self._peek_eof():
                    # The input ends right after a page header: the reference's read of the page
                    # data sees a clean EOF, as at a page boundary, and its Verify stops there.
                    self._eof = True
                    return None
                if not self._fill(self._frame_size):
                    raise CleanEOF()
                pos, end = 0, self._frame_size
        except LTXError as e:
            raise e.at(f"decode page {self._frames_read}") from None
        return pgno, pos, end

    def _peek_eof(self) -> bool:
        """Whether the page block has no bytes after the current buffer (a read that finds some
        keeps them for :meth:`_fill`)."""
        if self._next is not None:
            return False
        chunk = self._next_chunk()
        if chunk is None:
            return True
        self._next = chunk
        return False

    def _end_page_block(self) -> None:
        self._ended = True
        if self._lz4 is None:
            return
        # The end marker must also end the LZ4 frame (and the frame's content checksum must hold).
        trailing = self._pos < len(self._buf) or self._next is not None
        if not trailing:
            try:
                trailing = self._lz4.read_block() is not None
            except LTXError:
                trailing = True
        if trailing:
            raise LTXError("expected lz4 end frame")

    def pages(self) -> Iterator[tuple[int, memoryview]]:
        """Iterate the remaining page frames."""
        while (page := self.read_page()) is not None:
            yield page

    @property
    def frames_read(self) -> int:
        """How many page frames have been read so far."""
        return self._frames_read

    # -- trailer --------------------------------------------------------------------------------
    def close(self) -> Trailer:
        """Read the trailer and verify the file checksum and, for snapshots, the post-apply checksum."""
        try:
            if not self._ended:
                raise LTXError("cannot close, expected page")
            if self._lz4 is None:
                self._crc = crc64_update(self._buf[self._hashed : self._pos], self._crc)
                self._hashed = self._pos
            rest = bytes(self._buf[self._pos : self._pos + TRAILER_SIZE])
            self._surplus = len(self._buf) - self._pos > TRAILER_SIZE
            if self._next is not None:
                taken = TRAILER_SIZE - len(rest)
                rest += self._next[:taken]
                self._surplus = self._surplus or len(self._next) > taken
            if len(rest) < TRAILER_SIZE:
                try:
                    rest += read_exact(self._f, TRAILER_SIZE - len(rest))
                except CleanEOF:
                    if rest:
                        raise UnexpectedEOF() from None
                    raise
            trailer = Trailer.from_bytes(rest)
            computed = FLAG | crc64_update(rest[:8], self._crc)
            if computed != trailer.file_checksum:
                raise LTXError("file checksum mismatch")
            if self._is_snapshot:
                checksum = FLAG | self._snapshot_checksum
                if trailer.post_apply_checksum != checksum:
                    raise PostApplyMismatch(trailer.post_apply_checksum, checksum)
        except LTXError as e:
            raise e.at("close reader") from None
        return trailer

    def at_end(self) -> bool:
        """After :meth:`close`: whether the input ends with the trailer. The reference decoder never
        looks past the trailer (``ltx verify`` accepts such a file); the server refuses the extra bytes."""
        return not self._surplus and not self._f.read(1)


def verify(f: BinaryIO) -> tuple[Header, Trailer, list[int]]:
    """Decode and verify a whole LTX file (the reference's ``Verify``); returns header, trailer, pgnos."""
    dec = Decoder(f)
    header = dec.read_header()
    pgnos = [pgno for pgno, _ in dec.pages()]
    return header, dec.close(), pgnos

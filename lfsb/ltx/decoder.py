"""Streaming LTX decoder: header, then pages one by one, then the trailer with every check.

Reads from any binary file object and holds at most one LZ4 block (or 64 KiB of a plain file) at a
time. Errors read exactly like the Go reference's ``Verify`` (``decode header: …``,
``decode page N: …``, ``close reader: …``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from .checksum import EMPTY_DB_CHECKSUM, FLAG, crc64_update
from .errors import CleanEOF, LTXError, PostApplyMismatch, UnexpectedEOF
from .header import HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE, Header, Trailer
from .lz4frame import FrameReader, read_exact

_RAW_CHUNK = 64 * 1024
_PGNO = struct.Struct(">I")
_unpack_pgno = _PGNO.unpack_from


class Decoder:
    """Decodes one LTX file from ``f``; call :meth:`read_header`, :meth:`read_page` until None, :meth:`close`.

    Pages come back as ``(pgno, frame)`` where ``frame`` is a memoryview of ``be32(pgno) || data``
    (the logical page frame, which is also what the page checksum hashes); ``frame[4:]`` is the
    page. A frame stays valid after later reads.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.header: Header | None = None
        self._frames_read = 0
        self._crc: int | None = None
        self._buf = b""
        self._mv = memoryview(self._buf)
        self._pos = 0
        self._hashed = 0
        self._frame_size = 0
        self._lz4: FrameReader | None = None
        self._ended = False  # end marker seen
        self._eof = False  # input ended where a page header should start
        self._snapshot_checksum = EMPTY_DB_CHECKSUM
        self._lock_pgno = 0

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
        self._lock_pgno = header.lock_pgno
        if header.compressed:
            self._lz4 = FrameReader(self._f)
        return header

    # -- pages ----------------------------------------------------------------------------------
    def _next_chunk(self) -> bytes | None:
        if self._lz4 is not None:
            return self._lz4.read_block()
        return self._f.read(_RAW_CHUNK) or None

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available at ``_pos``; False on a clean end of the page block."""
        self._crc = crc64_update(self._mv[self._hashed : self._pos], self._crc)
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        while have < need:
            chunk = self._next_chunk()
            if chunk is None:
                if have == 0:
                    return False
                raise UnexpectedEOF()
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts) if len(parts) > 1 else parts[0]
        self._mv = memoryview(self._buf)
        self._pos = self._hashed = 0
        return True

    def read_page(self) -> tuple[int, memoryview] | None:
        """The next page frame as ``(pgno, frame)``, or None after the end marker."""
        if self._ended or self._eof:
            return None
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
                if not self._fill(self._frame_size):
                    raise CleanEOF()
                pos, end = 0, self._frame_size
        except LTXError as e:
            raise e.at(f"decode page {self._frames_read}") from None
        self._pos = end
        frame = self._mv[pos:end]
        if self.header.is_snapshot and pgno != self._lock_pgno:
            self._snapshot_checksum ^= crc64_update(frame)
        self._frames_read += 1
        return pgno, frame

    def _end_page_block(self) -> None:
        self._ended = True
        if self._lz4 is None:
            return
        # The end marker must also end the LZ4 frame (and the frame's content checksum must hold).
        trailing = self._pos < len(self._buf)
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
            self._crc = crc64_update(self._mv[self._hashed : self._pos], self._crc)
            self._hashed = self._pos
            rest = bytes(self._mv[self._pos : self._pos + TRAILER_SIZE])
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
            if self.header.is_snapshot:
                checksum = FLAG | self._snapshot_checksum
                if trailer.post_apply_checksum != checksum:
                    raise PostApplyMismatch(trailer.post_apply_checksum, checksum)
        except LTXError as e:
            raise e.at("close reader") from None
        return trailer


def verify(f: BinaryIO) -> tuple[Header, Trailer, list[int]]:
    """Decode and verify a whole LTX file (the reference's ``Verify``); returns header, trailer, pgnos."""
    dec = Decoder(f)
    header = dec.read_header()
    pgnos = [pgno for pgno, _ in dec.pages()]
    return header, dec.close(), pgnos

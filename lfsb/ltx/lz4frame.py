"""One LZ4 frame, read and written block by block, as pierrec/lz4 v4 (the Go reference) does.

The reader parses the frame itself so that every failure carries the reference's message
(``lz4: bad magic number``, ``lz4: invalid header checksum: got a7; expected a6``, …) and it never
reads past the end of the frame, so the LTX trailer can be read from the same file object.
The writer emits what Go's writer emits: 64 KiB independent blocks, a content checksum, no block
checksums (the Go reader rejects those, ltx-format.md §5.4), incompressible blocks stored raw.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import lz4.block
import xxhash

from .errors import CleanEOF, LTXError, UnexpectedEOF

FRAME_MAGIC = 0x184D2204
SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
BLOCK_SIZE = 64 * 1024
"""Logical bytes per block written (Go's default, the 64 KiB block max size)."""

_BLOCK_MAX_SIZES = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_UNCOMPRESSED_BIT = 0x80000000
_U32 = struct.Struct("<I")
_FRAME_DESCRIPTOR = bytes.fromhex("04224d186440a7")
_END_MARK = b"\x00\x00\x00\x00"
_DICT_SIZE = 64 * 1024
_SKIP_CHUNK = 64 * 1024


def read_exact(f: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes: :class:`CleanEOF` when none are left, :class:`UnexpectedEOF` when some."""
    data = f.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            if got == 0:
                raise CleanEOF()
            raise UnexpectedEOF()
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_more(f: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes in the middle of a structure: any shortfall is an unexpected EOF."""
    try:
        return read_exact(f, n)
    except CleanEOF:
        raise UnexpectedEOF() from None


def _skip(f: BinaryIO, n: int) -> None:
    """Drop ``n`` bytes, read in bounded pieces: a skippable frame may claim up to 4 GiB."""
    while n > 0:
        n -= len(_read_more(f, min(n, _SKIP_CHUNK)))


class FrameReader:
    """Reads the blocks of one LZ4 frame from ``f`` (skipping skippable frames before it)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._started = False
        self._done = False
        self._block_max = 0
        self._linked = False
        self._block_checksum = False
        self._content_checksum = False
        self._xxh = xxhash.xxh32()
        self._dict = b""

    def _read_descriptor(self) -> bool:
        f = self._f
        while True:
            try:
                (magic,) = _U32.unpack(read_exact(f, 4))
            except CleanEOF:
                return False
            if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC:
                (size,) = _U32.unpack(_read_more(f, 4))
                _skip(f, size)
                continue
            if magic != FRAME_MAGIC:
                raise LTXError("lz4: bad magic number")
            break
        flg, bd = _read_more(f, 2)
        if flg >> 6 != 1:
            raise LTXError(f"lz4: unsupported frame version: {flg >> 6}")
        if flg & 0x02 or bd & 0x8F:
            raise LTXError("lz4: reserved frame descriptor bits set")
        if flg & 0x01:
            raise LTXError("lz4: dictionary id not supported")
        descriptor = bytes((flg, bd))
        if flg & 0x08:
            descriptor += _read_more(f, 8)  # content size: present but not needed
        (hc,) = _read_more(f, 1)
        expected = (xxhash.xxh32_intdigest(descriptor) >> 8) & 0xFF
        if hc != expected:
            raise LTXError(f"lz4: invalid header checksum: got {expected:x}; expected {hc:x}")
        block_max = _BLOCK_MAX_SIZES.get((bd >> 4) & 0x7)
        if block_max is None:
            raise LTXError("lz4: invalid block max size")
        self._block_max = block_max
        self._linked = not flg & 0x20
        self._block_checksum = bool(flg & 0x10)
        self._content_checksum = bool(flg & 0x04)
        return True

    def read_block(self) -> bytes | None:
        """The next block's uncompressed bytes, or None once the frame has ended (and verified)."""
        if self._done:
            return None
        f = self._f
        if not self._started:
            self._started = True
            if not self._read_descriptor():
                self._done = True
                return None
        while True:
            (size,) = _U32.unpack(_read_more(f, 4))
            if size == 0:
                self._done = True
                if self._content_checksum:
                    (stored,) = _U32.unpack(_read_more(f, 4))
                    computed = self._xxh.intdigest()
                    if stored != computed:
                        raise LTXError(f"lz4: invalid frame checksum: got {computed:x}; expected {stored:x}")
                return None
            raw = bool(size & _UNCOMPRESSED_BIT)
            size &= ~_UNCOMPRESSED_BIT
            if size > self._block_max:
                raise LTXError("lz4: invalid block size")
            payload = _read_more(f, size)
            if self._block_checksum:
                (stored,) = _U32.unpack(_read_more(f, 4))
            if raw:
                data = payload
            else:
                try:
                    if self._linked and self._dict:
                        data = lz4.block.decompress(
                            payload, uncompressed_size=self._block_max, dict=self._dict
                        )
                    else:
                        data = lz4.block.decompress(payload, uncompressed_size=self._block_max)
                except lz4.block.LZ4BlockError:
                    raise LTXError("lz4: invalid source or destination buffer too short") from None
            if self._block_checksum:
                # pierrec/lz4 v4 hashes the uncompressed block (the spec says the stored one),
                # which is why the reference rejects every compressed block that carries one.
                computed = xxhash.xxh32_intdigest(data)
                if computed != stored:
                    raise LTXError(f"lz4: invalid block checksum: got {computed:x}; expected {stored:x}")
            if self._content_checksum:
                self._xxh.update(data)
            if self._linked:
                self._dict = (self._dict + data)[-_DICT_SIZE:]
            if data:
                return data


class FrameWriter:
    """Writes one LZ4 frame to ``f``: call :meth:`write_block` with at most 64 KiB, then :meth:`close`."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._xxh = xxhash.xxh32()
        f.write(_FRAME_DESCRIPTOR)

    def write_block(self, data: bytes | bytearray | memoryview) -> None:
        """Compress one block (stored raw when compression does not shrink it)."""
        n = len(data)
        compressed = lz4.block.compress(data, store_size=False)
        if len(compressed) < n:
            self._f.write(_U32.pack(len(compressed)))
            self._f.write(compressed)
        else:
            self._f.write(_U32.pack(n | _UNCOMPRESSED_BIT))
            self._f.write(data)
        self._xxh.update(data)

    def close(self) -> None:
        """Write the end mark and the content checksum."""
        self._f.write(_END_MARK + _U32.pack(self._xxh.intdigest()))

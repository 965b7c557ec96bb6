"""One LZ4 frame, read and written block by block, as pierrec/lz4 v4 (the Go reference) does.

The reader parses the frame itself so that every failure carries the reference's message
(``lz4: bad magic number``, ``lz4: invalid header checksum: got a7; expected a6``, …) and it never
reads past the end of the frame, so the LTX trailer can be read from the same file object. It
follows the reference's rules, which are not the LZ4 specification's: the version, reserved and
dictionary-id bits of the descriptor are not looked at, any magic ``0x184D2Axx`` starts a skippable
frame, input that ends where a field would start ends the stream cleanly (the reference's
``io.EOF``) while input that ends inside a field is an unexpected EOF, and a block is decoded by
:func:`decode_block`'s rules (a last sequence may end with a match; a match offset of 0 and a last
token with a match length but no offset are corrupt).
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
SKIPPABLE_MAGIC_PREFIX = 0x184D2A
"""A magic whose top three bytes are these starts a skippable frame (the reference skips all 256)."""
BLOCK_SIZE = 64 * 1024
"""Logical bytes per block written (Go's default, the 64 KiB block max size)."""

_BLOCK_MAX_SIZES = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_UNCOMPRESSED_BIT = 0x80000000
_U32 = struct.Struct("<I")
_FRAME_DESCRIPTOR = bytes.fromhex("04224d186440a7")
_END_MARK = b"\x00\x00\x00\x00"
_DICT_SIZE = 64 * 1024
_SKIP_CHUNK = 64 * 1024
_MIN_MATCH = 4
_CORRUPT = "lz4: invalid source or destination buffer too short"


class _FrameEnd(Exception):
    """The input ended where a frame field would start: the reference's clean end of stream."""


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


def _read_field(f: BinaryIO, n: int) -> bytes:
    """A frame field of ``n`` bytes: :class:`_FrameEnd` when none are left (the reference then ends
    the stream as if the frame had ended), :class:`UnexpectedEOF` when only some are."""
    try:
        return read_exact(f, n)
    except CleanEOF:
        raise _FrameEnd() from None


def _skip(f: BinaryIO, n: int) -> None:
    """Drop ``n`` bytes, read in bounded pieces: a skippable frame may claim up to 4 GiB. Fewer
    bytes than that, even some, end the stream cleanly, as the reference's ``io.CopyN`` does."""
    while n > 0:
        chunk = f.read(min(n, _SKIP_CHUNK))
        if not chunk:
            raise _FrameEnd()
        n -= len(chunk)


def _extend(src: bytes, si: int, length: int) -> tuple[int, int]:
    """A literal or match length of 15 goes on in the bytes at ``si``, each 255 adding and asking
    for one more: the whole length and the index after it (IndexError if the input ends inside)."""
    while True:
        x = src[si]
        si += 1
        length += x
        if x != 255:
            return length, si


def _token(src: bytes, si: int) -> tuple[int, int, int]:
    """The sequence token at ``si``: the token, its literal count and the index after them."""
    token = src[si]
    literals = token >> 4
    if literals == 15:
        literals, si = _extend(src, si + 1, literals)
        return token, literals, si
    return token, literals, si + 1


def _go_rules_hold(src: bytes) -> bool:
    """Whether a block that liblz4 decoded also passes the two checks the reference makes and
    liblz4 does not: no match offset is 0, and the last token has no match length when the
    input ends after its literals. Walks the tokens only (the caller already has the output)."""
    n = len(src)
    si = 0
    try:
        while si < n:
            token, literals, si = _token(src, si)
            si += literals
            if si >= n:
                return si == n and not token & 15
            if si + 2 > n or not (src[si] or src[si + 1]):
                return False
            si += 2
            if token & 15 == 15:
                _, si = _extend(src, si, 15)
    except IndexError:
        return False
    return True


def decode_block(src: bytes, capacity: int, dictionary: bytes = b"") -> bytes:
    """Decode one LZ4 block of at most ``capacity`` bytes by the reference's rules, in Python.

    pierrec/lz4 v4 reads sequences while input is left: a token, literals, then (unless the input
    ended right after the literals and the token's match length is 0) a 2-byte offset that must
    not be 0 and may reach back into ``dictionary``, and the match; the last sequence may end with
    a match. Anything else is ``lz4: invalid source or destination buffer too short``. Used for the
    blocks liblz4 refuses, which the reference may still accept.
    """
    if not src:
        return b""
    out = bytearray()
    n = len(src)
    si = 0
    try:
        while si < n:
            token, literals, si = _token(src, si)
            if si + literals > n or len(out) + literals > capacity:
                raise LTXError(_CORRUPT)
            out += src[si : si + literals]
            si += literals
            length = token & 15
            if si == n:
                if length:
                    raise LTXError(_CORRUPT)
                break
            if si + 2 > n:
                raise LTXError(_CORRUPT)
            offset = src[si] | src[si + 1] << 8
            si += 2
            if offset == 0:
                raise LTXError(_CORRUPT)
            if length == 15:
                length, si = _extend(src, si, length)
            length += _MIN_MATCH
            if len(out) + length > capacity:
                raise LTXError(_CORRUPT)
            start = len(out) - offset
            if start < 0:
                if -start > len(dictionary):
                    raise LTXError(_CORRUPT)
                taken = dictionary[len(dictionary) + start :][:length]
                out += taken
                length -= len(taken)
                start = 0
            while length > 0:  # an overlapping match repeats its bytes
                piece = out[start : start + length]
                out += piece
                start += len(piece)
                length -= len(piece)
    except IndexError:
        raise LTXError(_CORRUPT) from None
    return bytes(out)


class FrameReader:
    """Reads the blocks of one LZ4 frame from ``f`` (skipping skippable frames before it).

    ``trusted`` skips the token walk that checks, on every block liblz4 accepts, the two rules
    the reference has and liblz4 lacks (see :func:`decode_block`): for files lfsb wrote itself or
    already verified, where the walk would only cost time. ``checksums=False`` also skips the frame's
    content checksum (the LTX file checksum still covers every byte of the data).
    """

    def __init__(self, f: BinaryIO, *, trusted: bool = False, checksums: bool = True) -> None:
        self._f = f
        self._trusted = trusted
        self._checksums = checksums
        self._started = False
        self._done = False
        self._block_max = 0
        self._linked = False
        self._block_checksum = False
        self._content_checksum = False
        self._xxh = xxhash.xxh32()
        self._dict = b""

    def _read_descriptor(self) -> None:
        f = self._f
        while True:
            (magic,) = _U32.unpack(_read_field(f, 4))
            if magic >> 8 == SKIPPABLE_MAGIC_PREFIX:
                (size,) = _U32.unpack(_read_field(f, 4))
                _skip(f, size)
                continue
            if magic != FRAME_MAGIC:
                raise LTXError("lz4: bad magic number")
            break
        descriptor = _read_field(f, 3)  # FLG, BD and (without a content size) the checksum
        flg, bd = descriptor[0], descriptor[1]
        if flg & 0x08:
            descriptor += _read_field(f, 8)  # content size: present but not needed
        hc = descriptor[-1]
        expected = (xxhash.xxh32_intdigest(descriptor[:-1]) >> 8) & 0xFF
        if hc != expected:
            raise LTXError(f"lz4: invalid header checksum: got {expected:x}; expected {hc:x}")
        block_max = _BLOCK_MAX_SIZES.get((bd >> 4) & 0x7)
        if block_max is None:
            raise LTXError("lz4: invalid block size")
        self._block_max = block_max
        self._linked = not flg & 0x20
        self._block_checksum = bool(flg & 0x10)
        self._content_checksum = bool(flg & 0x04)

    def read_block(self) -> bytes | None:
        """The next block's uncompressed bytes, or None once the frame has ended (and verified).

        Input that ends where a frame field would start also ends the frame (unverified), as in
        the reference; input that ends inside a field is :class:`UnexpectedEOF`.
        """
        if self._done:
            return None
        try:
            if not self._started:
                self._started = True
                self._read_descriptor()
            while (data := self._next_block()) is not None:
                if data:
                    return data
        except _FrameEnd:
            pass
        self._done = True
        return None

    def _next_block(self) -> bytes | None:
        """One block's bytes (maybe empty), or None after the end mark and content checksum."""
        f = self._f
        (size,) = _U32.unpack(_read_field(f, 4))
        if size == 0:
            if self._content_checksum:
                (stored,) = _U32.unpack(_read_field(f, 4))
                computed = self._xxh.intdigest() if self._checksums else stored
                if stored != computed:
                    raise LTXError(f"lz4: invalid frame checksum: got {computed:x}; expected {stored:x}")
            return None
        raw = bool(size & _UNCOMPRESSED_BIT)
        size &= ~_UNCOMPRESSED_BIT
        if size > self._block_max:
            raise LTXError("lz4: invalid block size")
        payload = _read_field(f, size) if size else b""
        if self._block_checksum:
            (stored,) = _U32.unpack(_read_field(f, 4))
        data = payload if raw else self._decompress(payload)
        if self._block_checksum:
            # pierrec/lz4 v4 hashes the uncompressed block (the spec says the stored one),
            # which is why the reference rejects every compressed block that carries one.
            computed = xxhash.xxh32_intdigest(data)
            if computed != stored:
                raise LTXError(f"lz4: invalid block checksum: got {computed:x}; expected {stored:x}")
        if self._content_checksum and self._checksums:
            self._xxh.update(data)
        if self._linked:
            self._dict = (self._dict + data)[-_DICT_SIZE:]
        return data

    def _decompress(self, payload: bytes) -> bytes:
        """liblz4 first (fast); the reference's rules decide when liblz4 refuses or may be lax."""
        dictionary = self._dict if self._linked else b""
        try:
            if dictionary:
                data = lz4.block.decompress(payload, uncompressed_size=self._block_max, dict=dictionary)
            else:
                data = lz4.block.decompress(payload, uncompressed_size=self._block_max)
        except lz4.block.LZ4BlockError:
            return decode_block(payload, self._block_max, dictionary)
        if not self._trusted and not _go_rules_hold(payload):
            raise LTXError(_CORRUPT)
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

"""Helpers shared by the LTX tests: an awkward input stream, a whole-file page reader, and LTX files and LZ4
frames laid out by hand (breaking any rule a test needs broken)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import lz4.block
import xxhash

from lfsb.ltx import (
    EMPTY_DB_CHECKSUM,
    FLAG,
    PAGE_SIZES,
    Decoder,
    Header,
    Trailer,
    crc64_update,
    fold,
    page_checksum,
)


class ChunkyReader(io.RawIOBase):
    """A non-seekable stream whose ``read`` returns at most 7 bytes: code that reads it must stream."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = min(len(buf), 7, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def read_pages(data: bytes) -> tuple[Header, Trailer, list[tuple[int, bytes]]]:
    """Decode and verify a whole LTX file: header, trailer and ``(pgno, page data)`` in file order."""
    dec = Decoder(io.BytesIO(data))
    header = dec.read_header()
    pages = [(pgno, bytes(frame[4:])) for pgno, frame in dec.pages()]
    return header, dec.close(), pages


_LZ4_BLOCK_MAX_IDS = {64 << 10: 4, 256 << 10: 5, 1 << 20: 6, 4 << 20: 7}


def lz4_frame(
    logical: bytes,
    *,
    block_max: int = 64 << 10,
    block_size: int | None = None,
    linked: bool = False,
    content_checksum: bool = True,
    block_checksum: bool = False,
    content_size: int | None = None,
    stored: bool = False,
) -> bytes:
    """One LZ4 frame of ``logical`` laid out by hand, with every descriptor option and lie available.

    ``block_size`` (default ``block_max``) is how many logical bytes go into each block, so a value over
    ``block_max`` makes blocks the frame forbids; ``content_size`` is stored as is (true or not);
    ``stored`` keeps every block uncompressed; block checksums hash the uncompressed block, as pierrec/lz4
    (and the lfsb reader) do.
    """
    flg = 0x40 | (0 if linked else 0x20) | (0x10 if block_checksum else 0) | (0x04 if content_checksum else 0)
    descriptor = bytes([flg | (0x08 if content_size is not None else 0), _LZ4_BLOCK_MAX_IDS[block_max] << 4])
    if content_size is not None:
        descriptor += content_size.to_bytes(8, "little")
    out = [b"\x04\x22\x4d\x18", descriptor, bytes([(xxhash.xxh32_intdigest(descriptor) >> 8) & 0xFF])]
    step = block_size or block_max
    history = b""
    for off in range(0, len(logical), step):
        chunk = logical[off : off + step]
        if stored:
            out += [(len(chunk) | 0x80000000).to_bytes(4, "little"), chunk]
        else:
            payload = lz4.block.compress(chunk, store_size=False, dict=history)
            out += [len(payload).to_bytes(4, "little"), payload]
        if block_checksum:
            out.append(xxhash.xxh32_intdigest(chunk).to_bytes(4, "little"))
        if linked:
            history = (history + chunk)[-(64 << 10) :]
    out.append(bytes(4))
    if content_checksum:
        out.append(xxhash.xxh32_intdigest(logical).to_bytes(4, "little"))
    return b"".join(out)


def raw_ltx(
    header: Header,
    pages: Sequence[tuple[int, bytes]],
    post_apply_checksum: int | None = None,
    frame: Callable[[bytes], bytes] = lz4_frame,
) -> bytes:
    """An LTX file laid out byte by byte, whatever rules ``header`` and ``pages`` break, with a correct
    file checksum: pages are written as given (any pgno, order, repetition, size), the header unvalidated.

    ``post_apply_checksum`` defaults to the database checksum of the pages (lock page excluded); ``frame``
    wraps the logical page block when the header says LZ4.
    """
    head = header.to_bytes()
    logical = b"".join(pgno.to_bytes(4, "big") + data for pgno, data in pages) + bytes(4)
    if post_apply_checksum is None:
        lock = header.lock_pgno if header.page_size in PAGE_SIZES else 0
        post_apply_checksum = EMPTY_DB_CHECKSUM
        for pgno, data in pages:
            if pgno != lock:
                post_apply_checksum = fold(post_apply_checksum, page_checksum(pgno, data))
    post = post_apply_checksum.to_bytes(8, "big")
    file_checksum = FLAG | crc64_update(post, crc64_update(logical, crc64_update(head)))
    body = frame(logical) if header.compressed else logical
    return head + body + post + file_checksum.to_bytes(8, "big")

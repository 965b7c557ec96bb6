"""Helpers shared by the LTX tests: a deliberately awkward input stream and a whole-file page reader."""

from __future__ import annotations

import io

from lfsb.ltx import Decoder, Header, Trailer


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

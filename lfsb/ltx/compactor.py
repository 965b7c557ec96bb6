"""Streaming compaction of contiguous LTX files into one (ltx-format.md §10).

A k-way merge on page number: each input is decoded page by page, the copy from the latest input
wins, pages past the final commit are dropped. Memory holds one block per input, never a whole file.
Unlike the reference, an unreadable input header raises, and inputs whose pages are out of order
are rejected rather than silently merged wrong.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import BinaryIO

from .decoder import Decoder
from .encoder import Encoder
from .errors import LTXError
from .header import FLAG_COMPRESS_LZ4, Header, Trailer
from .text import format_txid


def check_contiguous(headers: Sequence[Header], allow_gaps: bool = False) -> None:
    """Raise unless the headers (sorted by TXID) share a page size and follow on without gaps."""
    for prev, nxt in itertools.pairwise(headers):
        if prev.page_size != nxt.page_size:
            raise LTXError(f"input files have mismatched page sizes: {prev.page_size} != {nxt.page_size}")
        if not allow_gaps and prev.max_txid + 1 != nxt.min_txid:
            raise LTXError(
                "non-contiguous transaction ids in input files: "
                f"({format_txid(prev.min_txid)},{format_txid(prev.max_txid)}) -> "
                f"({format_txid(nxt.min_txid)},{format_txid(nxt.max_txid)})"
            )


def compact(
    inputs: Sequence[BinaryIO],
    output: BinaryIO,
    compress: bool = True,
    allow_gaps: bool = False,
    timestamp: int | None = None,
    trusted: bool = False,
    checksums: bool = True,
) -> tuple[Header, Trailer]:
    """Merge ``inputs`` (in any order) into ``output``; returns the output header and trailer.

    ``timestamp`` overrides the output timestamp (by default the last input's). On any error the
    output is incomplete and must be discarded: inputs are only fully verified at the end.
    ``trusted`` and ``checksums`` are :class:`Decoder`'s, for inputs lfsb wrote itself or already
    verified.
    """
    if not inputs:
        raise LTXError("at least one input reader required")
    decoders = []
    for i, f in enumerate(inputs):
        dec = Decoder(f, trusted=trusted, checksums=checksums)
        try:
            dec.read_header()
        except LTXError as e:
            raise e.at(f"input {i}: {e.stage}") from None
        decoders.append(dec)
    decoders.sort(key=lambda d: (d.header.min_txid, d.header.max_txid))
    headers = [d.header for d in decoders]
    check_contiguous(headers, allow_gaps)
    first, last = headers[0], headers[-1]
    out_header = Header(
        page_size=first.page_size,
        commit=last.commit,
        min_txid=first.min_txid,
        max_txid=last.max_txid,
        flags=FLAG_COMPRESS_LZ4 if compress else 0,
        timestamp=last.timestamp if timestamp is None else timestamp,
        pre_apply_checksum=first.pre_apply_checksum,
    )
    enc = Encoder(output, out_header, sum_pages=False)  # the last input's post-apply checksum holds
    _merge_pages(decoders, enc, last.commit)
    trailers = []
    for i, dec in enumerate(decoders):
        try:
            trailers.append(dec.close())
        except LTXError as e:
            raise LTXError(e.detail, f"close reader {i}") from None
    return out_header, enc.close(trailers[-1].post_apply_checksum)


def _input_error(e: LTXError, i: int) -> LTXError:
    return LTXError(e.detail, f"input {i}: {e.stage}")


def _read(dec: Decoder, i: int, prev: int) -> tuple[int, memoryview] | None:
    try:
        page = dec.read_page()
    except LTXError as e:
        raise _input_error(e, i) from None
    if page is not None and page[0] <= prev:
        raise LTXError(f"out-of-order page numbers: {prev},{page[0]}", f"input {i}")
    return page


def _merge_pages(decoders: list[Decoder], enc: Encoder, commit: int) -> None:
    # The heap holds one int key per input, ``pgno << shift | (mask - i)``, so that for equal pgnos the
    # latest input pops first; ``frames[i]`` is input i's pending frame.
    shift = len(decoders).bit_length()
    mask = (1 << shift) - 1
    frames = [memoryview(b"")] * len(decoders)
    heap: list[int] = []
    for i, dec in enumerate(decoders):
        if (page := _read(dec, i, 0)) is not None:
            heap.append(page[0] << shift | (mask - i))
            frames[i] = page[1]
    heapq.heapify(heap)
    reads = [dec.read_page for dec in decoders]
    write_frame = enc.write_frame
    heappop, heapreplace = heapq.heappop, heapq.heapreplace
    last = 0
    while len(heap) > 1:
        key = heap[0]
        pgno = key >> shift
        i = mask - (key & mask)
        if pgno != last:
            last = pgno
            if pgno <= commit:
                _write(write_frame, pgno, frames[i])
        try:
            page = reads[i]()
        except LTXError as e:
            raise _input_error(e, i) from None
        if page is None:
            heappop(heap)
        elif page[0] > pgno:
            frames[i] = page[1]
            heapreplace(heap, page[0] << shift | (mask - i))
        else:
            raise LTXError(f"out-of-order page numbers: {pgno},{page[0]}", f"input {i}")
    if heap:
        i = mask - (heap[0] & mask)
        _drain(decoders[i], i, heap[0] >> shift, frames[i], last, commit, write_frame)


def _drain(
    dec: Decoder,
    i: int,
    pgno: int,
    frame: memoryview,
    last: int,
    commit: int,
    write_frame: Callable[[int, memoryview], None],
) -> None:
    """The merge once input ``i`` is the only one left: copy its pages straight through."""
    read = dec.read_page
    while True:
        if pgno != last and pgno <= commit:
            _write(write_frame, pgno, frame)
        try:
            page = read()
        except LTXError as e:
            raise _input_error(e, i) from None
        if page is None:
            return
        if page[0] <= pgno:
            raise LTXError(f"out-of-order page numbers: {pgno},{page[0]}", f"input {i}")
        pgno, frame = page


def _write(write_frame: Callable[[int, memoryview], None], pgno: int, frame: memoryview) -> None:
    try:
        write_frame(pgno, frame)
    except LTXError as e:
        raise e.at(f"copy page {pgno} header") from None

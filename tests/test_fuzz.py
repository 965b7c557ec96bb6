"""Fuzzing with hostile LTX files: the decoder and ``POST /db/tx`` keep their contract whatever they are fed.

The decoder (``lfsb.ltx.verify``) accepts a file or raises ``LTXError``, and ingestion's check
(``lfsb.store.ingest.inspect``) accepts it or raises a 4xx ``LfsbError``: never another exception, never more
than :data:`MEMORY_LIMIT` of memory or :data:`TIME_LIMIT` seconds for one input. Inputs are mutants of valid
files: byte-level damage (bit flips, inserted, deleted and overwritten bytes, truncation, stale header fields)
on top of file-level changes re-encoded with correct checksums, so that the deeper checks are reached (header
fields, pages past the commit, the lock page, duplicate and unordered pages, odd page sizes, every LZ4 frame
option and lie), plus LZ4 bombs. ``POST /db/tx`` gets mutants of the files a LiteFS node sends and must answer
2xx only for a valid file that follows on, 4xx otherwise, and change nothing when it rejects one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from random import Random
from typing import Any, TypeVar

import lz4.block
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfsb.errors import LfsbError
from lfsb.ltx import (
    FLAG,
    FLAG_COMPRESS_LZ4,
    HEADER_SIZE,
    PAGE_SIZES,
    Header,
    LTXError,
    Pos,
    compact,
    format_filename,
    lock_pgno,
    verify,
)
from lfsb.server.main import Server
from lfsb.store.ingest import inspect, inspect_file
from tests.lfsb_server import Client, Reply, assert_unchanged, server_state
from tests.litefs import LiteFSEmulator
from tests.ltx_helpers import ChunkyReader, lz4_frame, raw_ltx, read_pages

T = TypeVar("T")

MEMORY_LIMIT = 64 << 20
"""Peak Python allocations allowed while one input is decoded and inspected."""
TIME_LIMIT = 10.0
"""Seconds one input may take (generous: a hang, not slowness, is what it catches)."""
FUZZ_SETTINGS = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# -- the contract -------------------------------------------------------------------------------------------
@contextmanager
def within_bounds() -> Iterator[None]:
    """Fail if the block allocates over :data:`MEMORY_LIMIT` at its peak or runs over :data:`TIME_LIMIT`."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak allocation {peak / 2**20:.1f} MiB"
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f} s"


def check_decoder(data: bytes) -> bool:
    """Run ``verify`` and ``inspect`` on one input and check their contract; True if ``inspect`` accepted it.

    ``verify`` reads through a buffered reader, as the server's files are read; ``inspect`` reads the bytes
    in memory, as the server reads small bodies. Whatever ``inspect`` accepts, ``verify`` accepts too, with
    the same header and pages, and it keeps LiteFS's rules that the reference decoder does not check.
    """
    try:
        verified: tuple[Any, ...] | None = verify(io.BufferedReader(io.BytesIO(data)))
    except LTXError:
        verified = None
    try:
        inc = inspect(io.BytesIO(data), len(data))
    except LfsbError as e:
        assert 400 <= e.status < 500, e
        return False
    assert verified is not None, "inspect accepted what verify rejected"
    header, trailer, pgnos = verified
    assert (inc.header, inc.trailer, list(inc.pgnos)) == (header, trailer, pgnos)
    assert all(a < b for a, b in itertools.pairwise(pgnos))
    assert all(0 < p <= header.commit and p != header.lock_pgno for p in pgnos)
    if header.is_snapshot:
        assert len(pgnos) == header.commit - (header.commit >= header.lock_pgno)
    return True


# -- seeds --------------------------------------------------------------------------------------------------
def page(pgno: int, size: int, seed: int = 0) -> bytes:
    """Page contents: half a recognisable motif (compresses well), half random bytes (does not)."""
    motif = (pgno.to_bytes(4, "big") + seed.to_bytes(4, "big")) * (size // 16)
    return motif + Random(pgno * 1000 + seed).randbytes(size - len(motif))


def seed_files() -> dict[str, bytes]:
    """Valid LTX files in every shape LiteFS and lfsb write: plain and LZ4, snapshots and incrementals,
    several page sizes, an empty database, multi-block frames, and LZ4 frames with the options other writers
    use (linked blocks, small blocks, a content size, stored blocks, a skippable frame first)."""
    pre = FLAG | 0x1234
    snap = Header(512, 5, 1, 3, timestamp=1_700_000_000_000)
    snap_lz4 = Header(4096, 20, 1, 1, FLAG_COMPRESS_LZ4, timestamp=1_700_000_000_000, node_id=7)
    inc = Header(1024, 12, 5, 7, FLAG_COMPRESS_LZ4, timestamp=1_700_000_000_123, pre_apply_checksum=pre)
    empty = Header(512, 0, 9, 9, pre_apply_checksum=pre)
    wal = Header(
        4096, 3, 2, 2, pre_apply_checksum=pre, wal_offset=32, wal_size=4152, wal_salt1=1, wal_salt2=2
    )
    snap_pages = [(p, page(p, 512)) for p in range(1, 6)]
    big_pages = [(p, page(p, 4096)) for p in range(1, 21)]
    inc_pages = [(p, page(p, 1024, 1)) for p in (2, 5, 9, 10, 11, 12)]
    return {
        "snapshot": raw_ltx(snap, snap_pages),
        "snapshot-lz4": raw_ltx(snap_lz4, big_pages),
        "incremental-lz4": raw_ltx(inc, inc_pages, FLAG | 0x5678),
        "empty": raw_ltx(empty, [], FLAG),
        "wal": raw_ltx(wal, [(3, page(3, 4096))], FLAG | 0x9ABC),
        "linked": raw_ltx(snap_lz4, big_pages, frame=partial(lz4_frame, linked=True, block_size=10_000)),
        "stored": raw_ltx(
            inc, inc_pages, FLAG | 0x5678, frame=partial(lz4_frame, content_size=6 * 1028 + 4, stored=True)
        ),
        "skippable": raw_ltx(
            snap_lz4, big_pages, frame=lambda logical: skippable(b"lfsb") + lz4_frame(logical)
        ),
    }


def skippable(payload: bytes, claimed: int | None = None) -> bytes:
    """An LZ4 skippable frame carrying ``payload`` (its size field says ``claimed``, default the truth)."""
    size = len(payload) if claimed is None else claimed
    return (0x184D2A53).to_bytes(4, "little") + size.to_bytes(4, "little") + payload


SEEDS = seed_files()


def test_seeds_are_valid() -> None:
    for data in SEEDS.values():
        assert check_decoder(data)
        assert verify(ChunkyReader(data)) == verify(io.BytesIO(data))


# -- mutations ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """An LTX file taken apart: what :func:`raw_ltx` lays out again (``None``: the snapshot checksum)."""

    header: Header
    pages: list[tuple[int, bytes]]
    post_apply_checksum: int | None

    @classmethod
    def of(cls, data: bytes) -> Parts:
        """Decode a valid file."""
        header, trailer, pages = read_pages(data)
        return cls(header, pages, trailer.post_apply_checksum)


def _edges(lo: int, hi: int, *extra: int) -> st.SearchStrategy[int]:
    """Values of a field: boundary values inside [lo, hi] most of the time, any value otherwise."""
    edges = sorted({v for v in (lo, lo + 1, 0, 1, 2, hi - 1, hi, *extra) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_U32 = _edges(0, 2**32 - 1, 511, 512, 1024, 4096, 65536, 131072, 1 << 20, lock_pgno(512), 2**31)
_U64 = _edges(0, 2**64 - 1, 2**32, 2**63 - 1, 2**63, FLAG | 1)
_I64 = _edges(-(2**63), 2**63 - 1, -1, 1 << 62, 253_402_300_800_000, -62_135_596_800_001)
FIELDS: dict[str, st.SearchStrategy[int]] = {
    "flags": _edges(0, 2**32 - 1, 1, 3, 0x80000001),
    "page_size": st.one_of(st.sampled_from(sorted(PAGE_SIZES)), _U32),
    "commit": _U32,
    "min_txid": _U64,
    "max_txid": _U64,
    "timestamp": _I64,
    "pre_apply_checksum": _U64,
    "wal_offset": _I64,
    "wal_size": _I64,
    "wal_salt1": _U32,
    "wal_salt2": _U32,
    "node_id": _U64,
}
_HEADER_OFFSETS = {"flags": (4, 4), "page_size": (8, 4), "commit": (12, 4), "min_txid": (16, 8)}
_HEADER_OFFSETS |= {"max_txid": (24, 8), "timestamp": (32, 8), "pre_apply_checksum": (40, 8)}


def set_field(parts: Parts, name: str, value: int) -> Parts:
    """Any value in a header field (no validation: the file checksum is computed for it)."""
    return dataclasses.replace(parts, header=dataclasses.replace(parts.header, **{name: value}))


def _at(pages: list[Any], i: int) -> int:
    """``i`` as an index into ``pages`` (mutations are drawn before the file they apply to is known)."""
    return i % len(pages)


def duplicate_page(parts: Parts, i: int) -> Parts:
    """Write page ``i`` twice in a row."""
    pages = list(parts.pages)
    if pages:
        pages.insert(_at(pages, i), pages[_at(pages, i)])
    return dataclasses.replace(parts, pages=pages)


def swap_pages(parts: Parts, i: int, j: int) -> Parts:
    """Exchange two pages (out of order, or a snapshot that skips one)."""
    pages = list(parts.pages)
    if pages:
        a, b = _at(pages, i), _at(pages, j)
        pages[a], pages[b] = pages[b], pages[a]
    return dataclasses.replace(parts, pages=pages)


def drop_page(parts: Parts, i: int) -> Parts:
    """Leave page ``i`` out (a snapshot or an extension without every page)."""
    pages = list(parts.pages)
    if pages:
        del pages[_at(pages, i)]
    return dataclasses.replace(parts, pages=pages)


def renumber_page(parts: Parts, i: int, pgno: Callable[[Header], int]) -> Parts:
    """Give page ``i`` another number: ``pgno`` picks it from the header (past the commit, the lock page…)."""
    pages = list(parts.pages)
    if pages:
        k = _at(pages, i)
        pages[k] = (pgno(parts.header) % 2**32, pages[k][1])
    return dataclasses.replace(parts, pages=pages)


def resize_page(parts: Parts, i: int, delta: int) -> Parts:
    """Make page ``i`` shorter or longer than the page size (the frames after it shift)."""
    pages = list(parts.pages)
    if pages:
        k = _at(pages, i)
        pgno, data = pages[k]
        pages[k] = (pgno, data[: max(0, len(data) + delta)] + bytes(max(0, delta)))
    return dataclasses.replace(parts, pages=pages)


def set_post_apply(parts: Parts, value: int | None) -> Parts:
    """Another post-apply checksum in the trailer (``None``: the true one for the pages)."""
    return dataclasses.replace(parts, post_apply_checksum=value)


_FIELD_BITS = {"commit": 32, "min_txid": 64, "max_txid": 64, "pre_apply_checksum": 64}


def shift_field(parts: Parts, name: str, delta: int) -> Parts:
    """Move a field a little (a TXID next to the position, one page more or less, a checksum one off)."""
    return set_field(parts, name, (getattr(parts.header, name) + delta) % 2 ** _FIELD_BITS[name])


def rescale(parts: Parts, page_size: int) -> Parts:
    """Another valid page size, every page cut or padded to it."""
    pages = [(pgno, data[:page_size].ljust(page_size, b"\0")) for pgno, data in parts.pages]
    return dataclasses.replace(set_field(parts, "page_size", page_size), pages=pages)


def _lock(h: Header) -> int:
    return lock_pgno(h.page_size) if h.page_size in PAGE_SIZES else 1


PGNOS: list[Callable[[Header], int]] = [
    lambda h: 0,
    lambda h: h.commit,
    lambda h: h.commit + 1,
    lambda h: 2**32 - 1,
    _lock,
    lambda h: _lock(h) + 1,
]
INDEXES = st.integers(0, 1000)
FILE_MUTATIONS: st.SearchStrategy[Callable[[Parts], Parts]] = st.one_of(
    st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: st.builds(partial, st.just(set_field), name=st.just(name), value=FIELDS[name])
    ),
    st.builds(partial, st.just(duplicate_page), i=INDEXES),
    st.builds(partial, st.just(swap_pages), i=INDEXES, j=INDEXES),
    st.builds(partial, st.just(drop_page), i=INDEXES),
    st.builds(partial, st.just(renumber_page), i=INDEXES, pgno=st.sampled_from(PGNOS)),
    st.builds(partial, st.just(resize_page), i=INDEXES, delta=st.sampled_from([-4096, -1, 1, 4])),
    st.builds(partial, st.just(set_post_apply), value=st.one_of(st.none(), _U64)),
    st.builds(
        partial,
        st.just(shift_field),
        name=st.sampled_from(sorted(_FIELD_BITS)),
        delta=st.sampled_from([-2, -1, 1, 2]),
    ),
    st.builds(partial, st.just(rescale), page_size=st.sampled_from(sorted(PAGE_SIZES))),
)
FRAMES: st.SearchStrategy[Callable[[bytes], bytes]] = st.one_of(
    st.just(lz4_frame),
    st.builds(
        partial,
        st.just(lz4_frame),
        block_max=st.sampled_from([64 << 10, 256 << 10, 1 << 20, 4 << 20]),
        block_size=st.one_of(st.none(), st.sampled_from([100, 4100, 65_536, 65_537, 300_000])),
        linked=st.booleans(),
        content_checksum=st.booleans(),
        block_checksum=st.booleans(),
        content_size=st.one_of(st.none(), _U64),
        stored=st.booleans(),
    ),
)


def flip(data: bytearray, at: int, bit: int) -> None:
    """Flip one bit."""
    if data:
        data[at % len(data)] ^= 1 << bit


def insert(data: bytearray, at: int, chunk: bytes) -> None:
    """Insert bytes (at the header's end: a skippable frame before the LZ4 frame)."""
    data[at % (len(data) + 1) : at % (len(data) + 1)] = chunk


def delete(data: bytearray, at: int, n: int) -> None:
    """Delete up to ``n`` bytes."""
    if data:
        del data[at % len(data) : at % len(data) + n]


def append(data: bytearray, chunk: bytes) -> None:
    """Trailing bytes after the trailer."""
    data += chunk


def truncate(data: bytearray, at: int) -> None:
    """Cut the file short."""
    del data[at % (len(data) + 1) :]


def put_u32(data: bytearray, at: int, value: int, order: str) -> None:
    """Overwrite 4 bytes (a pgno, an LZ4 block size or magic, a checksum…) with ``value``."""
    if len(data) >= 4:
        k = at % (len(data) - 3)
        data[k : k + 4] = value.to_bytes(4, order)  # type: ignore[arg-type]


def stale_field(data: bytearray, name: str, value: int) -> None:
    """Change a header field in place, leaving the file checksum stale."""
    offset, size = _HEADER_OFFSETS[name]
    if len(data) >= HEADER_SIZE:
        data[offset : offset + size] = (value % 2 ** (8 * size)).to_bytes(size, "big")


BYTES = st.binary(min_size=1, max_size=64)
OFFSETS = st.integers(0, 2**20)
BYTE_MUTATIONS: st.SearchStrategy[Callable[[bytearray], None]] = st.one_of(
    st.builds(partial, st.just(flip), at=OFFSETS, bit=st.integers(0, 7)),
    st.builds(partial, st.just(insert), at=OFFSETS, chunk=BYTES),
    st.builds(partial, st.just(delete), at=OFFSETS, n=st.integers(1, 5000)),
    st.builds(partial, st.just(truncate), at=OFFSETS),
    st.builds(
        partial,
        st.just(put_u32),
        at=OFFSETS,
        value=st.one_of(_U32, st.sampled_from([0x184D2204, 0x184D2A50, 0x80010000, 0x00400001])),
        order=st.sampled_from(["big", "little"]),
    ),
    st.sampled_from(sorted(_HEADER_OFFSETS)).flatmap(
        lambda name: st.builds(partial, st.just(stale_field), name=st.just(name), value=FIELDS[name])
    ),
    st.builds(partial, st.just(insert), at=st.just(HEADER_SIZE), chunk=st.builds(skippable, BYTES)),
    st.builds(partial, st.just(append), chunk=BYTES),
)

DAMAGE = st.one_of(st.just([]), st.lists(BYTE_MUTATIONS, min_size=1, max_size=3))
"""No byte damage half of the time, so that file-level changes reach the checks behind the checksums."""


@st.composite
def mutants(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` taken apart, changed (0-3 file mutations), laid out again with an LZ4 frame of any shape and
    correct checksums, then damaged (0-3 byte mutations)."""
    parts = Parts.of(seed)
    for mutate in draw(st.lists(FILE_MUTATIONS, max_size=3), label="file mutations"):
        parts = mutate(parts)
    frame = draw(FRAMES, label="frame")
    data = bytearray(raw_ltx(parts.header, parts.pages, parts.post_apply_checksum, frame))
    for mutate in draw(DAMAGE, label="byte mutations"):
        mutate(data)
    return bytes(data)


@FUZZ_SETTINGS
@given(st.sampled_from(sorted(SEEDS)).flatmap(lambda name: mutants(SEEDS[name])))
def test_decoder_contract_on_mutants(data: bytes) -> None:
    with within_bounds():
        check_decoder(data)


# -- LZ4 frames and bombs -----------------------------------------------------------------------------------
@FUZZ_SETTINGS
@given(
    page_size=st.sampled_from([512, 4096, 65536]),
    pages=st.integers(0, 40),
    block_max=st.sampled_from([64 << 10, 256 << 10, 1 << 20, 4 << 20]),
    block_size=st.one_of(st.none(), st.sampled_from([1000, 4100, 65_536, 65_537, 1 << 20, (4 << 20) + 1])),
    linked=st.booleans(),
    content_checksum=st.booleans(),
    content_size=st.one_of(st.none(), _U64),
    stored=st.booleans(),
    skip=st.one_of(st.none(), st.tuples(BYTES, st.one_of(st.none(), _U32))),
)
def test_lz4_frame_shapes(
    page_size: int,
    pages: int,
    block_max: int,
    block_size: int | None,
    linked: bool,
    content_checksum: bool,
    content_size: int | None,
    stored: bool,
    skip: tuple[bytes, int | None] | None,
) -> None:
    """Any LZ4 frame the Go reader accepts is accepted, with the same pages; a block over the frame's maximum
    or a skippable frame that claims more than is there is rejected; a content size is never trusted."""
    header = Header(page_size, pages, 1, 1, FLAG_COMPRESS_LZ4)
    content = [(p, page(p, page_size)) for p in range(1, pages + 1)]
    prefix = b"" if skip is None else skippable(skip[0], skip[1])

    def frame(logical: bytes) -> bytes:
        options = {"linked": linked, "content_checksum": content_checksum, "content_size": content_size}
        return prefix + lz4_frame(
            logical, block_max=block_max, block_size=block_size, stored=stored, **options
        )

    data = raw_ltx(header, content, frame=frame)
    logical_size = pages * (4 + page_size) + 4
    oversized = min(block_size or block_max, logical_size) > block_max
    truncated_skip = skip is not None and skip[1] is not None and skip[1] != len(skip[0])
    with within_bounds():
        accepted = check_decoder(data)
    assert accepted == (not oversized and not truncated_skip)
    if accepted:
        assert read_pages(data)[2] == content


def test_lz4_bomb_is_streamed(tmp_path: Path) -> None:
    """A snapshot of 65 000 copies of page 1: 256 MiB of page frames from a 1 MiB LZ4 frame of 4 MiB blocks,
    decoded block by block in bounded memory; ``verify`` accepts it (the reference checks no page order),
    ``inspect`` stops at the second copy of page 1."""
    pages = (256 << 20) // 4100
    header = Header(4096, 1, 1, 1, FLAG_COMPRESS_LZ4)
    data = raw_ltx(header, [(1, bytes(4096))] * pages, frame=partial(lz4_frame, block_max=4 << 20))
    assert len(data) < 2 << 20
    with within_bounds():
        header, _, pgnos = verify(io.BufferedReader(io.BytesIO(data)))
    assert len(pgnos) == pages and header.commit == 1
    (tmp_path / "bomb.ltx").write_bytes(data)
    with within_bounds(), pytest.raises(LfsbError, match="out-of-order page numbers: 1,1"):
        inspect_file(tmp_path / "bomb.ltx")


def _frame_with(block: bytes) -> Callable[[bytes], bytes]:
    """A frame of one hand-made block (size field and payload) followed by a proper end, whatever the page
    block is: for blocks that lie about their size."""
    return lambda logical: lz4_frame(b"")[:7] + block + bytes(4)


_BLOCK_OF_1MIB = lz4.block.compress(bytes(1 << 20), store_size=False)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        pytest.param(
            _frame_with(len(_BLOCK_OF_1MIB).to_bytes(4, "little") + _BLOCK_OF_1MIB),
            "lz4: invalid source or destination buffer too short",
            id="block-decompresses-past-max",
        ),
        pytest.param(
            _frame_with((65537 | 2**31).to_bytes(4, "little") + bytes(65537)),
            "lz4: invalid block size",
            id="stored-block-past-max",
        ),
        pytest.param(
            _frame_with((0x7FFFFFFF).to_bytes(4, "little") + bytes(10)),
            "lz4: invalid block size",
            id="huge-block",
        ),
        pytest.param(
            lambda logical: skippable(b"x" * 100, 0xFFFFFFFF) + lz4_frame(logical),
            "close reader: cannot close, expected page",  # the reference's io.CopyN: a clean EOF
            id="skippable-claims-4GiB",
        ),
        pytest.param(
            lambda logical: skippable(b"", 0) * 20_000 + lz4_frame(logical), None, id="20000-skippable-frames"
        ),
        pytest.param(
            lambda logical: lz4_frame(logical)[:-4] + b"\xde\xad\xbe\xef",
            "decode page 3: expected lz4 end frame",
            id="content-checksum",
        ),
        pytest.param(
            lambda logical: lz4_frame(logical, content_size=2**64 - 1), None, id="content-size-claims-16EiB"
        ),
        pytest.param(
            lambda logical: lz4_frame(logical, linked=True, block_size=1000), None, id="linked-blocks"
        ),
        pytest.param(lambda logical: lz4_frame(logical, block_size=1), None, id="one-byte-blocks"),
        pytest.param(
            lambda logical: lz4_frame(logical + logical[:1]),
            "expected lz4 end frame",
            id="data-after-end-marker",
        ),
        pytest.param(
            lambda logical: lz4_frame(logical)[:-8], "decode page 3: expected lz4 end frame", id="no-end-mark"
        ),
    ],
)
def test_lz4_hostile_frames(frame: Callable[[bytes], bytes], error: str | None) -> None:
    """Blocks over the frame's maximum (whatever their size field says), a skippable frame claiming 4 GiB, a
    bad content checksum, bytes after the end marker, a missing end mark: an LTXError in bounded memory.
    Thousands of skippable frames, a content size claiming 16 EiB, linked and 1-byte blocks: accepted."""
    header = Header(4096, 3, 1, 1, FLAG_COMPRESS_LZ4)
    data = raw_ltx(header, [(p, page(p, 4096)) for p in (1, 2, 3)], frame=frame)
    with within_bounds():
        if error is None:
            assert check_decoder(data)
        else:
            with pytest.raises(LTXError, match=error):
                verify(io.BufferedReader(io.BytesIO(data)))
            assert not check_decoder(data)


# -- POST /db/tx --------------------------------------------------------------------------------------------
SERVER_EXAMPLES = 200
REQUEST_TIMEOUT = 30.0
"""Seconds any request may take: longer is a hang."""


@pytest.fixture
def storage_env() -> dict[str, str]:
    """The local-directory store: what is fuzzed here happens before anything reaches object storage."""
    return {}


async def post_body(client: Client, name: str, body: bytes, piece: int | None) -> Reply:
    """``POST /db/tx?db=name`` with a Content-Length, or chunked in ``piece``-byte chunks as LiteFS does."""
    if piece is None:
        return await client.fetch("POST", f"/db/tx?db={name}", data=body)

    async def chunks() -> AsyncIterator[bytes]:
        for off in range(0, len(body), piece):
            yield body[off : off + piece]

    return await client.fetch("POST", f"/db/tx?db={name}", data=chunks())


async def test_post_tx_contract_on_mutants(server: Server, client: Client, tmp_path: Path) -> None:
    """Mutants of the next file, of the next three compacted (what LiteFS sends) and of a snapshot for a new
    database: 2xx only for a valid file that follows on (the position moves to its end), else 4xx with nothing
    changed, every answer within :data:`REQUEST_TIMEOUT`."""
    loop = asyncio.get_running_loop()
    accepted = []

    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop from hypothesis's thread; a hang fails the test."""
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=REQUEST_TIMEOUT)

    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()

        async def seeds() -> dict[str, tuple[str, bytes]]:
            """Valid bodies (database name, file) following the server's position of ``db``."""
            remote = Pos.from_json((await client.request("GET", "/pos"))[1]["db"]).txid
            while node.txid < remote + 3:
                node.execute(
                    "INSERT INTO t (v) VALUES (?)", (f"row {node.txid} " + "x" * 50 * (node.txid % 40),)
                )
            paths = [node.ltx_dir / format_filename(t, t) for t in range(remote + 1, remote + 4)]
            out = io.BytesIO()
            with ExitStack() as stack:
                compact([stack.enter_context(p.open("rb")) for p in paths], out)
            status, _, snapshot = await client.request("GET", "/db/snapshot?db=db")
            assert status == 200
            return {
                "next": ("db", paths[0].read_bytes()),
                "compacted": ("db", out.getvalue()),
                "snapshot": ("new", snapshot),
            }

        @settings(FUZZ_SETTINGS, max_examples=SERVER_EXAMPLES)
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            bodies = run(seeds())
            name, seed = bodies[data.draw(st.sampled_from(sorted(bodies)), label="seed")]
            body = data.draw(mutants(seed), label="body")
            piece = data.draw(st.sampled_from([None, 100, 4096]), label="chunk size")
            before = run(server_state(server, client))
            reply = run(post_body(client, name, body, piece))
            if reply.status >= 300:
                assert 400 <= reply.status < 500, reply
                assert reply.data is not None and reply.data["code"] and reply.data["error"], reply
                run(assert_unchanged(server, client, before))
                return
            assert reply.status == 200, reply
            header, trailer, _ = verify(io.BytesIO(body))
            pre = Pos.from_json(before.positions.get(name))
            assert (header.min_txid - 1, header.pre_apply_checksum) == pre
            after = run(server_state(server, client))
            assert after.positions[name] == Pos(header.max_txid, trailer.post_apply_checksum).to_json()
            accepted.append(name)
            if name == "new":  # dropped again, so that the next snapshot creates it anew
                assert run(client.request("DELETE", "/db?db=new"))[0] == 200
            else:  # the node follows wherever the mutant took the server (another TXID range: a restore)
                run(node.sync())

        await asyncio.to_thread(fuzz)
    assert accepted, "no mutant was ever valid: the fuzz never reached acceptance"

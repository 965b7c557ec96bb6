"""Property tests of the LTX library: encoder/decoder round trips, compaction, corruption, timestamps."""

from __future__ import annotations

import io
from dataclasses import dataclass
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from lfsb.ltx import (
    FLAG,
    FLAG_COMPRESS_LZ4,
    HEADER_SIZE,
    Encoder,
    Header,
    LTXError,
    compact,
    database_checksum,
    decode_database,
    format_timestamp,
    parse_timestamp,
    verify,
)
from tests.ltx_helpers import ChunkyReader, read_pages

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)
PAGE_SIZES = st.sampled_from([512, 1024, 4096])
CHECKSUMS = st.integers(0, 2**63 - 1).map(lambda n: FLAG | n)


def page_data(page_size: int) -> st.SearchStrategy[bytes]:
    """Page contents: a short motif repeated (compresses well) or random bytes (stored raw by LZ4)."""
    repeated = st.binary(min_size=1, max_size=16).map(lambda motif: (motif * page_size)[:page_size])
    random = st.integers(0, 2**32).map(lambda seed: Random(seed).randbytes(page_size))
    return st.one_of(repeated, random)


@dataclass
class LTXFile:
    """What an LTX file should hold, and its encoded bytes."""

    header: Header
    pages: list[tuple[int, bytes]]
    post_apply_checksum: int
    data: bytes


def encode(header: Header, pages: list[tuple[int, bytes]], post_apply_checksum: int | None) -> LTXFile:
    """Write the file with :class:`Encoder` (``None``: the snapshot's computed post-apply checksum)."""
    out = io.BytesIO()
    enc = Encoder(out, header)
    for pgno, data in pages:
        enc.write_page(pgno, data)
    trailer = enc.close(post_apply_checksum)
    return LTXFile(header, pages, trailer.post_apply_checksum, out.getvalue())


def db_checksum(db: dict[int, bytes], page_size: int) -> int:
    """The database checksum of pages 1..len(db)."""
    return database_checksum(io.BytesIO(b"".join(db[p] for p in sorted(db))), page_size)


@st.composite
def ltx_files(draw: st.DrawFn) -> LTXFile:
    """A random snapshot or incremental file, LZ4 or plain, of a random set of pages."""
    page_size = draw(PAGE_SIZES)
    is_snapshot = draw(st.booleans())
    if is_snapshot:
        commit = draw(st.integers(0, 24))
        pgnos = list(range(1, commit + 1))
    else:
        commit = draw(st.integers(1, 64))
        pgnos = sorted(draw(st.sets(st.integers(1, commit), max_size=24)))
    min_txid = 1 if is_snapshot else draw(st.integers(2, 2**40))
    header = Header(
        page_size=page_size,
        commit=commit,
        min_txid=min_txid,
        max_txid=min_txid + draw(st.integers(0, 5)),
        flags=draw(st.sampled_from([0, FLAG_COMPRESS_LZ4])),
        timestamp=draw(st.integers(0, 2**45)),
        pre_apply_checksum=0 if is_snapshot else draw(CHECKSUMS),
    )
    pages = [(pgno, draw(page_data(page_size))) for pgno in pgnos]
    post = None if is_snapshot else (FLAG if commit == 0 else draw(CHECKSUMS))
    return encode(header, pages, post)


@PROPERTY_SETTINGS
@given(ltx_files())
def test_encoder_decoder_round_trip(f: LTXFile) -> None:
    header, trailer, pages = read_pages(f.data)
    assert header == f.header
    assert pages == f.pages
    assert trailer.post_apply_checksum == f.post_apply_checksum
    assert verify(ChunkyReader(f.data)) == (header, trailer, [pgno for pgno, _ in f.pages])
    if header.compressed:
        assert f.data[HEADER_SIZE : HEADER_SIZE + 7] == bytes.fromhex("04224d186440a7")
    if header.is_snapshot:
        out = io.BytesIO()
        decode_database(io.BytesIO(f.data), out)
        assert out.getvalue() == b"".join(data for _, data in f.pages)
        assert trailer.post_apply_checksum == db_checksum(dict(f.pages), header.page_size)


@dataclass
class Chain:
    """Contiguous LTX files and the databases before and after applying them in order."""

    page_size: int
    files: list[LTXFile]
    before: dict[int, bytes]
    after: dict[int, bytes]


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    """1-5 contiguous files from a snapshot or from an existing database, growing and shrinking it.

    As in SQLite, a file that grows the database holds every page past the previous size.
    """
    page_size = draw(PAGE_SIZES)
    txid = draw(st.sampled_from([1, 2, 100]))
    before: dict[int, bytes] = {}
    if txid > 1:
        before = {p: draw(page_data(page_size)) for p in range(1, draw(st.integers(1, 12)) + 1)}
    db = dict(before)
    files = []
    for _ in range(draw(st.integers(1, 5))):
        commit = draw(st.integers(0, 20))
        if txid == 1:
            pgnos = list(range(1, commit + 1))
        else:
            rewritten = draw(st.sets(st.integers(1, commit), max_size=8)) if commit else set()
            pgnos = sorted(rewritten | set(range(len(db) + 1, commit + 1)))
        pages = [(pgno, draw(page_data(page_size))) for pgno in pgnos]
        max_txid = txid + draw(st.integers(0, 2))
        header = Header(
            page_size=page_size,
            commit=commit,
            min_txid=txid,
            max_txid=max_txid,
            flags=draw(st.sampled_from([0, FLAG_COMPRESS_LZ4])),
            timestamp=draw(st.integers(0, 2**45)),
            pre_apply_checksum=0 if txid == 1 else db_checksum(db, page_size),
        )
        db.update(pages)
        db = {p: data for p, data in db.items() if p <= commit}
        files.append(encode(header, pages, db_checksum(db, page_size)))
        txid = max_txid + 1
    return Chain(page_size, files, before, db)


@PROPERTY_SETTINGS
@given(chains(), st.booleans(), st.booleans())
def test_compaction_equals_applying_in_order(chain: Chain, compress: bool, reverse: bool) -> None:
    inputs = [io.BytesIO(f.data) for f in chain.files]
    out = io.BytesIO()
    compact(inputs[::-1] if reverse else inputs, out, compress=compress)
    header, trailer, pages = read_pages(out.getvalue())
    first, last = chain.files[0], chain.files[-1]
    assert (header.min_txid, header.max_txid) == (first.header.min_txid, last.header.max_txid)
    assert (header.commit, header.timestamp) == (last.header.commit, last.header.timestamp)
    assert header.pre_apply_checksum == first.header.pre_apply_checksum
    assert header.compressed == compress
    assert (
        trailer.post_apply_checksum == last.post_apply_checksum == db_checksum(chain.after, chain.page_size)
    )
    # The compacted file applied to the starting database gives the same database, page for page.
    db = {**chain.before, **dict(pages)}
    assert {p: data for p, data in db.items() if p <= header.commit} == chain.after
    assert [pgno for pgno, _ in pages] == sorted(
        {p for f in chain.files for p, _ in f.pages if p <= header.commit}
    )


RESERVED = range(80, HEADER_SIZE)


@PROPERTY_SETTINGS
@given(ltx_files(), st.data())
def test_single_byte_corruption_is_rejected(f: LTXFile, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(f.data) - 1), label="offset")
    corrupt = bytearray(f.data)
    corrupt[offset] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        decoded = read_pages(bytes(corrupt))
    except LTXError:
        return
    # Accepted: the change must not have changed what the file says (reserved header bytes, or an
    # LZ4 block that still decompresses to the same bytes).
    assert decoded == read_pages(f.data)
    assert offset in RESERVED or f.header.compressed


@PROPERTY_SETTINGS
@given(st.integers(-62135596800000, 253402300799999))
def test_timestamp_text_round_trip(ms: int) -> None:
    text = format_timestamp(ms)
    assert parse_timestamp(text) == ms
    assert len(text) == len("2023-11-14T22:13:20.123Z")

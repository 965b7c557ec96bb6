"""Hand-made LTX files for the LZ4 and truncation corners where liblz4 and the Go reference differ.

Each file is laid out byte by byte from the rules of pierrec/lz4 v4.1.17 (the LZ4 reader of
superfly/ltx v0.3.14) and of ltx's ``Decoder.Verify``; none was produced by Go. The verdicts in
the manifest are what those rules give (read from the reference's source, see the README).
``python -m tests.handmade_ltx`` writes the files and ``manifest.json`` to
``tests/fixtures/ltx-handmade/``; the tests check that it still makes the committed bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lz4.block
import xxhash

from lfsb.ltx import FLAG_COMPRESS_LZ4, HEADER_SIZE, PAGE_HEADER_SIZE, Header
from tests.ltx_helpers import raw_ltx

HANDMADE = Path(__file__).resolve().parent / "fixtures" / "ltx-handmade"
PAGE_SIZE = 512
CORRUPT = "lz4: invalid source or destination buffer too short"
CANNOT_CLOSE = "close reader: cannot close, expected page"
_MAGIC = b"\x04\x22\x4d\x18"


def _page(pgno: int) -> bytes:
    """A page with some text, then zeros to its end (so a block can end with a match)."""
    text = f"hand-made page {pgno} ".encode() * (3 + pgno)
    return text + bytes(PAGE_SIZE - len(text))


PAGES = [(1, _page(1)), (2, _page(2))]
FRAME = PAGE_HEADER_SIZE + PAGE_SIZE
LOGICAL = b"".join(pgno.to_bytes(4, "big") + data for pgno, data in PAGES) + bytes(4)


def _header(flags: int) -> Header:
    return Header(page_size=PAGE_SIZE, commit=2, min_txid=1, max_txid=1, flags=flags, timestamp=1700000000000)


def descriptor(flg: int = 0x64, bd: int = 0x40) -> bytes:
    """Magic, FLG, BD and the header checksum (no content size)."""
    return _MAGIC + bytes([flg, bd, (xxhash.xxh32_intdigest(bytes([flg, bd])) >> 8) & 0xFF])


def block(payload: bytes, stored: bool = False) -> bytes:
    """A data block: its size (bit 31 when stored raw), then its bytes."""
    return (len(payload) | (0x80000000 if stored else 0)).to_bytes(4, "little") + payload


def _length(n: int) -> bytes:
    """The extra bytes of a length of ``15 + n`` or more (LZ4's 255-run encoding)."""
    return b"\xff" * (n // 255) + bytes([n % 255])


def sequence(literals: bytes, offset: int | None = None, match: int = 0, nibble: int | None = None) -> bytes:
    """One LZ4 sequence: token, literals and, when ``offset`` is given, a match of ``match`` bytes.
    ``nibble`` forces the token's match-length bits (for a last token that lies)."""
    lit = len(literals)
    mlen = match - 4 if offset is not None else 0
    low = min(mlen, 15) if nibble is None else nibble
    out = bytes([min(lit, 15) << 4 | low])
    if lit >= 15:
        out += _length(lit - 15)
    out += literals
    if offset is not None:
        out += offset.to_bytes(2, "little")
        if mlen >= 15:
            out += _length(mlen - 15)
    return out


def ending_with_match(data: bytes) -> bytes:
    """A block of ``data`` (which must end with 5 or more zeros) whose last sequence is a match."""
    zeros = len(data) - len(data.rstrip(b"\x00"))
    assert zeros >= 5
    return sequence(data[: len(data) - zeros + 1], offset=1, match=zeros - 1)


def frame(blocks: list[bytes], head: bytes | None = None, checksum: bool = True) -> Callable[[bytes], bytes]:
    """A ``raw_ltx`` frame maker: ``head`` (default Go's descriptor), the blocks, the end mark and
    the content checksum of the logical stream."""

    def make(logical: bytes) -> bytes:
        tail = xxhash.xxh32_intdigest(logical).to_bytes(4, "little") if checksum else b""
        return (head or descriptor()) + b"".join(blocks) + bytes(4) + tail

    return make


def lz4_file(blocks: list[bytes] | None = None, head: bytes | None = None) -> bytes:
    """The two-page snapshot, LZ4, with the given blocks (default: liblz4's one block)."""
    if blocks is None:
        blocks = [block(lz4.block.compress(LOGICAL, store_size=False))]
    return raw_ltx(_header(FLAG_COMPRESS_LZ4), PAGES, frame=frame(blocks, head))


def _offset_zero() -> bytes:
    """A block with a match of offset 0 inside page 1's zeros, literals around it."""
    start = LOGICAL.index(bytes(16))  # the first run of zeros
    return sequence(LOGICAL[:start], offset=0, match=8) + sequence(LOGICAL[start + 8 :])


PER_PAGE = [block(LOGICAL[i : i + FRAME], stored=True) for i in range(0, 2 * FRAME, FRAME)] + [
    block(LOGICAL[2 * FRAME :], stored=True)
]
"""Stored blocks of one page frame each, then one of the end marker."""
_PER_PAGE_FILE = lz4_file(PER_PAGE)
_AFTER_BLOCK_1 = HEADER_SIZE + 7 + len(PER_PAGE[0])
_RAW_FILE = raw_ltx(_header(0), PAGES)
_FULL_FRAME = len(_PER_PAGE_FILE) - 16


def cases() -> list[dict]:
    """Every hand-made file: name, bytes, what it covers, and the reference's verdict."""
    header_block = [block(LOGICAL[: FRAME + PAGE_HEADER_SIZE], stored=True)]
    after_header_block = HEADER_SIZE + 7 + len(header_block[0])
    items: list[tuple[str, bytes, str, str | None]] = [
        ("lz4_version_00.ltx", lz4_file(head=descriptor(flg=0x24)),
         "frame descriptor version bits 00 (FLG 0x24): pierrec/lz4 never reads them", None),
        ("lz4_version_11.ltx", lz4_file(head=descriptor(flg=0xE4)), "frame descriptor version bits 11", None),
        ("lz4_reserved_bits.ltx", lz4_file(head=descriptor(flg=0x67, bd=0x4F)),
         "reserved descriptor bits and the dictionary-id flag set (FLG 0x67, BD 0x4F): not read", None),
        ("lz4_skippable_2a00.ltx", raw_ltx(_header(FLAG_COMPRESS_LZ4), PAGES, frame=frame(
            [block(lz4.block.compress(LOGICAL, store_size=False))],
            head=(0x184D2A00).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip" + descriptor())),
         "a skippable frame with magic 0x184D2A00 first: the reference skips every 0x184D2Axx", None),
        ("lz4_block_max_index_3.ltx", lz4_file(head=descriptor(bd=0x30)),
         "block max size index 3 (BD 0x30)", "decode page 0: lz4: invalid block size"),
        ("lz4_block_ends_with_match.ltx", lz4_file([block(ending_with_match(LOGICAL))]),
         "one block whose last sequence is a match (offset 1, extended length): liblz4 refuses it", None),
        ("lz4_blocks_end_with_match.ltx", lz4_file([
            block(ending_with_match(LOGICAL[:FRAME])), block(ending_with_match(LOGICAL[FRAME:]))]),
         "two blocks, each ending with a match", None),
        ("lz4_last_token_match_length.ltx", lz4_file([block(sequence(LOGICAL, nibble=1))]),
         "the last token has match length bits 1 but the input ends after its literals: liblz4 "
         "accepts it", f"decode page 0: {CORRUPT}"),
        ("lz4_last_token_half_offset.ltx", lz4_file([block(sequence(LOGICAL, nibble=1) + b"\x01")]),
         "the last token has a match length and one byte of offset", f"decode page 0: {CORRUPT}"),
        ("lz4_match_offset_zero.ltx", lz4_file([block(_offset_zero())]),
         "a match of offset 0 over zeros (liblz4 accepts it and writes zeros)", f"decode page 0: {CORRUPT}"),
        ("truncated_after_page_raw.ltx", _RAW_FILE[: HEADER_SIZE + FRAME],
         "uncompressed, cut right after page 1", CANNOT_CLOSE),
        ("truncated_after_page_header_raw.ltx", _RAW_FILE[: HEADER_SIZE + FRAME + PAGE_HEADER_SIZE],
         "uncompressed, cut right after page 2's page header", CANNOT_CLOSE),
        ("truncated_lz4_after_header.ltx", _PER_PAGE_FILE[:HEADER_SIZE],
         "LZ4 flag, header only", CANNOT_CLOSE),
        ("truncated_lz4_after_descriptor.ltx", _PER_PAGE_FILE[: HEADER_SIZE + 7],
         "header and the LZ4 frame descriptor only", CANNOT_CLOSE),
        ("truncated_lz4_after_block.ltx", _PER_PAGE_FILE[:_AFTER_BLOCK_1],
         "cut after the first block, which holds exactly page 1", CANNOT_CLOSE),
        ("truncated_lz4_after_block_size.ltx", _PER_PAGE_FILE[: _AFTER_BLOCK_1 + 4],
         "cut after the second block's size field", CANNOT_CLOSE),
        ("truncated_lz4_in_block_size.ltx", _PER_PAGE_FILE[: _AFTER_BLOCK_1 + 2],
         "cut inside the second block's size field", "decode page 1: unexpected EOF"),
        ("truncated_lz4_in_block.ltx", _PER_PAGE_FILE[: _AFTER_BLOCK_1 + 4 + 10],
         "cut inside the second block's bytes", "decode page 1: unexpected EOF"),
        ("truncated_lz4_after_page_header.ltx", lz4_file(header_block)[:after_header_block],
         "cut after a block that ends right after page 2's page header", CANNOT_CLOSE),
        ("truncated_lz4_no_content_checksum.ltx", _PER_PAGE_FILE[: _FULL_FRAME - 4],
         "cut after the end mark: no content checksum, no trailer", "close reader: EOF"),
        ("truncated_lz4_half_content_checksum.ltx", _PER_PAGE_FILE[: _FULL_FRAME - 2],
         "cut inside the content checksum", "decode page 2: expected lz4 end frame"),
    ]  # fmt: skip
    return [
        {"file": name, "data": data, "description": what, "valid": error is None, "expected_error": error}
        for name, data, what, error in items
    ]


def manifest() -> dict:
    """The manifest of :func:`cases` (without the bytes)."""
    return {
        "generator": "tests/handmade_ltx.py (by hand from the rules of pierrec/lz4 v4.1.17 and "
        "superfly/ltx v0.3.14; not produced by Go)",
        "fixtures": [{k: v for k, v in case.items() if k != "data"} for case in cases()],
    }


def main() -> None:
    """Write the files and manifest.json into tests/fixtures/ltx-handmade/."""
    HANDMADE.mkdir(parents=True, exist_ok=True)
    for case in cases():
        (HANDMADE / case["file"]).write_bytes(case["data"])
    (HANDMADE / "manifest.json").write_text(json.dumps(manifest(), indent=1) + "\n")


if __name__ == "__main__":
    main()

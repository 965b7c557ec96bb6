"""The LTX library against the Go reference's golden fixtures (manifest.json) and ltx-format.md."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from contextlib import ExitStack
from typing import BinaryIO

import lz4.frame
import pytest

from lfsb.ltx import (
    EMPTY_DB_CHECKSUM,
    FLAG,
    Encoder,
    Header,
    LTXError,
    Pos,
    checksum_from_json,
    compact,
    crc64_update,
    database_checksum,
    decode_database,
    encode_database,
    format_checksum,
    format_filename,
    format_timestamp,
    format_txid,
    lock_pgno,
    page_checksum,
    parse_checksum,
    parse_filename,
    parse_timestamp,
    parse_txid,
    txid_from_json,
    verify,
)
from tests.conftest import FIXTURES, load_manifest
from tests.ltx_helpers import ChunkyReader, read_pages

MANIFEST = load_manifest()
ENTRIES = {fx["file"]: fx for fx in MANIFEST["fixtures"]}
VALID = [fx for fx in MANIFEST["fixtures"] if fx["valid"]]
INVALID = [fx for fx in MANIFEST["fixtures"] if not fx["valid"]]
SNAPSHOTS = [fx for fx in MANIFEST["fixtures"] if "decoded_db_sha256" in fx]
COMPACTED = [fx for fx in MANIFEST["fixtures"] if fx["kind"] == "compacted"]
FROM_SOURCE_DB = [fx for fx in MANIFEST["fixtures"] if fx.get("source_db")]
LZ4_FRAME_START = bytes.fromhex("04224d186440a7")
STAGES = {"header": "decode header", "pages": "decode page", "close": "close reader"}

STREAMS: dict[str, Callable[[bytes], BinaryIO]] = {"plain": io.BytesIO, "chunky": ChunkyReader}


def ids(entries: list[dict]) -> list[str]:
    """Test ids: the fixture file names."""
    return [fx["file"] for fx in entries]


def error_of(call: Callable[..., object], *args: object) -> str:
    """The text of the LTXError that ``call(*args)`` raises."""
    with pytest.raises(LTXError) as err:
        call(*args)
    return str(err.value)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def expected_header(fx: dict, header: Header) -> dict:
    """The manifest's header fields that ``Header.to_json`` has (all of them must be present)."""
    return {key: fx["header"][key] for key in header.to_json()}


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("fx", VALID, ids=ids(VALID))
def test_valid_fixture_decodes(fx: dict, stream: str) -> None:
    data = fixture_bytes(fx["file"])
    header, trailer, pgnos = verify(STREAMS[stream](data))
    assert header.to_json() == expected_header(fx, header)
    assert header.is_snapshot == fx["header"]["is_snapshot"]
    assert header.filename == fx["header"]["filename"]
    assert header.timestamp_text == fx["header"]["timestamp_text"]
    assert header.to_bytes()[:80] == data[:80]  # reserved bytes are always written as zeros
    assert trailer.to_json() == fx["trailer"]
    assert pgnos == fx["page_numbers"]
    if "post_apply_pos" in fx:
        assert str(Pos(header.max_txid, trailer.post_apply_checksum)) == fx["post_apply_pos"]
        pre = Pos(header.min_txid - 1, header.pre_apply_checksum)
        assert str(pre) == fx["pre_apply_pos"]
        assert Pos.parse(fx["pre_apply_pos"]) == pre


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("fx", INVALID, ids=ids(INVALID))
def test_invalid_fixture_rejected(fx: dict, stream: str) -> None:
    with pytest.raises(LTXError) as err:
        verify(STREAMS[stream](fixture_bytes(fx["file"])))
    assert str(err.value) == fx["expected_error"]
    assert err.value.stage.startswith(STAGES[fx["failed_stage"]])
    assert str(err.value) == f"{err.value.stage}: {err.value.detail}"


@pytest.mark.parametrize("fx", SNAPSHOTS, ids=ids(SNAPSHOTS))
def test_snapshot_decodes_to_database(fx: dict) -> None:
    out = io.BytesIO()
    header, trailer = decode_database(ChunkyReader(fixture_bytes(fx["file"])), out)
    db = out.getvalue()
    assert len(db) == fx["decoded_db_size"] == header.commit * header.page_size
    assert hashlib.sha256(db).hexdigest() == fx["decoded_db_sha256"]
    checksum = database_checksum(io.BytesIO(db), header.page_size)
    assert format_checksum(checksum) == fx["decoded_db_checksum"] == trailer.to_json()["post_apply_checksum"]


DECODE_ERRORS = MANIFEST["decode_database_error_cases"] + [
    {"file": fx["file"], "expected_error": fx["decode_database_error"]}
    for fx in MANIFEST["fixtures"]
    if "decode_database_error" in fx
]


@pytest.mark.parametrize("case", DECODE_ERRORS, ids=ids(DECODE_ERRORS))
def test_decode_database_errors(case: dict) -> None:
    with pytest.raises(LTXError) as err:
        decode_database(io.BytesIO(fixture_bytes(case["file"])), io.BytesIO())
    assert str(err.value) == case["expected_error"]


def compact_files(names: list[str], compress: bool, allow_gaps: bool = False) -> bytes:
    out = io.BytesIO()
    with ExitStack() as stack:
        inputs = [stack.enter_context((FIXTURES / name).open("rb")) for name in names]
        compact(inputs, out, compress=compress, allow_gaps=allow_gaps)
    return out.getvalue()


GO_RETURNED_NIL = "compactor returned nil error but wrote no output"


@pytest.mark.parametrize("case", MANIFEST["compaction_error_cases"], ids=lambda c: ",".join(c["inputs"]))
def test_compaction_error_cases(case: dict) -> None:
    if case.get("result") == "ok":
        data = compact_files(case["inputs"], compress=False, allow_gaps=case["allow_noncontiguous"])
        header, trailer, _ = verify(io.BytesIO(data))
        first, last = ENTRIES[case["inputs"][0]], ENTRIES[case["inputs"][-1]]
        assert header.min_txid == parse_txid(first["header"]["min_txid"])
        assert header.max_txid == parse_txid(last["header"]["max_txid"])
        assert header.pre_apply_checksum == parse_checksum(first["header"]["pre_apply_checksum"])
        assert trailer.to_json()["post_apply_checksum"] == last["trailer"]["post_apply_checksum"]
        return
    with pytest.raises(LTXError) as err:
        compact_files(case["inputs"], compress=True)
    if case["expected_error"] == GO_RETURNED_NIL:
        # The reference silently returns nil for an unreadable input header; we must raise.
        bad = next(i for i, name in enumerate(case["inputs"]) if not ENTRIES[name]["valid"])
        assert str(err.value) == f"input {bad}: {ENTRIES[case['inputs'][bad]]['expected_error']}"
    else:
        assert str(err.value) == case["expected_error"]


@pytest.mark.parametrize("fx", COMPACTED, ids=ids(COMPACTED))
def test_compacted_fixture(fx: dict) -> None:
    expected = fixture_bytes(fx["file"])
    data = compact_files(fx["inputs"], compress=fx["output_lz4"])
    header, trailer, pgnos = verify(io.BytesIO(data))
    assert header.to_json() == expected_header(fx, header)
    assert trailer.to_json() == fx["trailer"]
    assert pgnos == fx["page_numbers"] == fx.get("expected_page_numbers", pgnos)
    if fx["output_lz4"]:
        # Our LZ4 bytes may differ from Go's; the logical content (and so the file checksum) must not.
        assert data[100:107] == LZ4_FRAME_START
        assert data[:100] == expected[:100] and data[-16:] == expected[-16:]
        assert lz4.frame.decompress(data[100:-16]) == lz4.frame.decompress(expected[100:-16])
        assert read_pages(data) == read_pages(expected)
    else:
        assert data == expected


def test_compacted_page_sources() -> None:
    fx = ENTRIES["compact/a1-a3_compacted.raw.ltx"]
    sources = {name.split("/")[1][:2]: dict(read_pages(fixture_bytes(name))[2]) for name in fx["inputs"]}
    _, _, pages = read_pages(compact_files(fx["inputs"], compress=False))
    assert [pgno for pgno, _ in pages] == [1, 2, 3]
    for pgno, data in pages:
        assert data == sources[fx["expected_page_sources"][str(pgno)]][pgno]


@pytest.mark.parametrize("fx", FROM_SOURCE_DB, ids=ids(FROM_SOURCE_DB))
def test_encode_database_of_source_db(fx: dict) -> None:
    path = FIXTURES / fx["source_db"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fx["source_db_sha256"]
    compress = bool(fx["header"]["flags"])
    out = io.BytesIO()
    with path.open("rb") as db:
        header, trailer = encode_database(db, out, compress=compress, timestamp=fx["header"]["timestamp"])
    assert format_checksum(trailer.post_apply_checksum) == fx["expected_post_apply_checksum"]
    assert header.to_json() == expected_header(fx, header)
    assert trailer.to_json() == fx["trailer"]  # the file checksum covers the logical stream only
    data = out.getvalue()
    if compress:
        assert data[100:107] == LZ4_FRAME_START
        assert read_pages(data) == read_pages(fixture_bytes(fx["file"]))
    else:
        assert data == fixture_bytes(fx["file"])


# -- text forms (ltx-format.md §11-§13) ----------------------------------------------------------


def test_txid_and_checksum_text() -> None:
    assert format_txid(10) == "000000000000000a"
    assert parse_txid("000000000000000A") == parse_txid("000000000000000a") == 10
    assert format_checksum(FLAG | 0x1234) == "8000000000001234"
    assert parse_checksum("8000000000001234") == FLAG | 0x1234
    for parse, what in ((parse_txid, "transaction id"), (parse_checksum, "checksum")):
        assert error_of(parse, "abc") == f'invalid formatted {what} length: "abc"'
        assert error_of(parse, "000000000000000g") == f'invalid {what} format: "000000000000000g"'


def test_txid_and_checksum_json() -> None:
    assert txid_from_json("00000000000000ff") == 255
    assert txid_from_json(None) == checksum_from_json(None) == 0
    assert checksum_from_json("8000000000000000") == EMPTY_DB_CHECKSUM
    assert error_of(txid_from_json, 255) == "cannot unmarshal TXID from JSON value"
    assert error_of(txid_from_json, "ff") == 'cannot parse TXID from JSON string: "ff"'
    assert error_of(checksum_from_json, "xyz") == 'cannot parse checksum from JSON string: "xyz"'


def test_pos_text_and_json() -> None:
    pos = Pos(42, FLAG | 0x1234)
    assert str(pos) == "000000000000002a/8000000000001234"
    assert Pos.parse(str(pos)) == pos
    assert Pos.parse("000000000000002a-8000000000001234") == pos  # the separator is not checked
    short = "000000000000002a/8"
    assert error_of(Pos.parse, short) == f'invalid formatted position length: "{short}"'
    text = json.dumps(pos.to_json(), separators=(",", ":"))
    assert text == '{"TXID":"000000000000002a","PostApplyChecksum":"8000000000001234"}'
    assert Pos.from_json(json.loads(text)) == pos
    assert Pos.from_json({"txid": "000000000000002a", "postapplychecksum": "8000000000001234"}) == pos
    assert Pos().to_json() == {"TXID": "0000000000000000", "PostApplyChecksum": "0000000000000000"}
    assert Pos.from_json(None) == Pos()


def test_filenames() -> None:
    assert format_filename(1, 16) == "0000000000000001-0000000000000010.ltx"
    assert parse_filename("0000000000000001-0000000000000010.ltx") == (1, 16)
    assert parse_filename("0000000000000005-0000000000000002.ltx") == (5, 2)  # min <= max unchecked
    for name in (
        "dir/0000000000000001-0000000000000010.ltx",
        "000000000000000A-000000000000000B.ltx",
        "1-2.ltx",
        "0000000000000001-0000000000000010.LTX",
    ):
        with pytest.raises(LTXError) as err:
            parse_filename(name)
        assert str(err.value) == f"invalid ltx filename: {name}"
    txids = [(1, 1), (2, 9), (10, 10), (255, 300), (2**40, 2**41)]
    assert sorted(format_filename(*t) for t in txids) == [format_filename(*t) for t in txids]


TS = 1700000000000  # 2023-11-14T22:13:20Z
ACCEPTED_TIMESTAMPS = {
    "2023-11-14T22:13:20.123Z": TS + 123,
    "2023-11-14T22:13:20Z": TS,
    "2023-11-14T22:13:20.1Z": TS + 100,
    "2023-11-14T22:13:20.123456789Z": TS + 123,
    "2023-11-14T22:13:20.999999999Z": TS + 999,
    "2023-11-14T22:13:20.123+02:00": TS + 123 - 2 * 3600 * 1000,
    "2023-11-14T22:13:20-00:00": TS,
    "2023-11-14T22:13:20,123Z": TS + 123,
    "0001-01-01T00:00:00+01:00": -62135596800000 - 3600 * 1000,  # before year 1 in UTC
}
REJECTED_TIMESTAMPS = [
    "2023-11-14 22:13:20Z",
    "2023-11-14t22:13:20Z",
    "2023-11-14T22:13:20z",
    "2023-11-14T22:13:20.123",
    "2023-11-14",
    "2023-11-14T22:13:20+0200",
    "2023-11-14T22:13:20.1234567890Z",
    "2023-11-14T24:00:00Z",
    "2023-02-30T22:13:20Z",
    " 2023-11-14T22:13:20Z",
    "2023-11-14T22:13:20Z ",
    "1700000000",
]


def test_timestamps() -> None:
    assert format_timestamp(TS + 123) == "2023-11-14T22:13:20.123Z"
    assert format_timestamp(TS) == "2023-11-14T22:13:20.000Z"
    assert format_timestamp(-62135596800000) == "0001-01-01T00:00:00.000Z"
    for text, ms in ACCEPTED_TIMESTAMPS.items():
        assert parse_timestamp(text) == ms, text
    for text in REJECTED_TIMESTAMPS:
        with pytest.raises(LTXError):
            parse_timestamp(text)
    assert error_of(format_timestamp, 2**62) == "timestamp out of range: 4611686018427387904"


# -- checksums, lock page, encoder rules (ltx-format.md §3-§7) -------------------------------------


def test_crc_check_value_and_page_checksum() -> None:
    assert crc64_update(b"123456789") == 0xB90956C775A41001
    assert crc64_update(b"6789", crc64_update(b"12345")) == 0xB90956C775A41001
    assert crc64_update(b"") == 0
    assert page_checksum(7, b"abc") == FLAG | crc64_update(b"\x00\x00\x00\x07abc")
    assert database_checksum(io.BytesIO(b""), 512) == EMPTY_DB_CHECKSUM == 0x8000000000000000


def test_lock_page_numbers() -> None:
    expected = {512: 2097153, 1024: 1048577, 4096: 262145, 65536: 16385}
    assert {size: lock_pgno(size) for size in expected} == expected
    assert ENTRIES["spec/lockpage_incremental_512.ltx"]["lock_pgno"] == lock_pgno(512)
    assert Header(page_size=4096, commit=1, min_txid=1, max_txid=1).lock_pgno == 262145


def incremental(commit: int = 10, page_size: int = 512) -> Header:
    return Header(page_size=page_size, commit=commit, min_txid=2, max_txid=2, pre_apply_checksum=FLAG | 1)


def snapshot(commit: int = 10, page_size: int = 512) -> Header:
    return Header(page_size=page_size, commit=commit, min_txid=1, max_txid=1)


def encoder_error(header: Header, pgnos: list[int], size: int | None = None) -> str:
    """The error of writing ``pgnos`` (the last one fails) with ``Encoder``."""
    enc = Encoder(io.BytesIO(), header)
    *ok, bad = pgnos
    for pgno in ok:
        enc.write_page(pgno, bytes(header.page_size))
    with pytest.raises(LTXError) as err:
        enc.write_page(bad, bytes(header.page_size if size is None else size))
    return str(err.value)


def test_encoder_page_rules() -> None:
    assert encoder_error(incremental(), [0]) == "page number required"
    assert encoder_error(incremental(commit=4), [5]) == "page number 5 out-of-bounds for commit size 4"
    assert encoder_error(incremental(), [3, 2]) == "out-of-order page numbers: 3,2"
    assert encoder_error(incremental(), [3, 3]) == "out-of-order page numbers: 3,3"
    assert encoder_error(incremental(), [1], size=100) == "invalid page buffer size: 100, expecting 512"
    lock = lock_pgno(512)
    assert encoder_error(incremental(commit=lock + 5), [lock]) == f"cannot encode lock page: pgno={lock}"
    assert encoder_error(snapshot(), [2]) == "snapshot transaction file must start with page number 1"
    assert encoder_error(snapshot(), [1, 3]) == "nonsequential page numbers in snapshot transaction: 1,3"
    assert error_of(Encoder, io.BytesIO(), snapshot(page_size=1000)) == "invalid page size: 1000"


class Sink:
    """A write-only file that keeps nothing (for a 1 GiB snapshot)."""

    def write(self, data: bytes) -> int:
        return len(data)


def test_encoder_snapshot_skips_lock_page() -> None:
    size = 65536
    lock = lock_pgno(size)
    enc = Encoder(Sink(), snapshot(commit=lock + 2, page_size=size))
    page = bytes(size)
    for pgno in range(1, lock):
        enc.write_page(pgno, page)
    assert error_of(enc.write_page, lock, page) == f"cannot encode lock page: pgno={lock}"
    assert error_of(enc.write_page, lock + 2, page) == (
        f"nonsequential page numbers in snapshot transaction (skip lock page): {lock - 1},{lock + 2}"
    )
    enc.write_page(lock + 1, page)


def test_encoder_trailer_rules() -> None:
    def close(header: Header, post_apply_checksum: int | None) -> str:
        return error_of(lambda: Encoder(io.BytesIO(), header).close(post_apply_checksum))

    assert close(incremental(), None) == "post-apply checksum required"
    assert close(incremental(), 0) == "post-apply checksum required"
    assert close(incremental(), 0x1234) == "invalid post-apply checksum format"
    assert (
        close(incremental(commit=0), FLAG | 1) == "post-apply checksum must be empty for zero-length database"
    )
    out = io.BytesIO()
    Encoder(out, incremental(commit=0)).close(EMPTY_DB_CHECKSUM)
    assert len(out.getvalue()) == 100 + 4 + 16  # header, end marker, trailer
    assert verify(io.BytesIO(out.getvalue()))[2] == []

"""The LTX v1 file format as ``superfly/ltx`` v0.3.14 writes and reads it.

A pure library: bytes and file objects in, bytes out; no asyncio, no network, nothing else from
lfsb. See ``docs/ltx-format.md`` of the project's shared documents for the byte layout.
"""

from .checksum import (
    EMPTY_DB_CHECKSUM,
    FLAG,
    crc64_update,
    fold,
    frame_checksum,
    lock_pgno,
    page_checksum,
)
from .compactor import check_contiguous, compact
from .decoder import Decoder, verify
from .encoder import Encoder
from .errors import LTXError, PostApplyMismatch
from .header import (
    FLAG_COMPRESS_LZ4,
    HEADER_SIZE,
    PAGE_HEADER_SIZE,
    PAGE_SIZES,
    TRAILER_SIZE,
    Header,
    Trailer,
)
from .sqlite import (
    SQLiteHeader,
    database_checksum,
    decode_database,
    diff_database,
    encode_database,
    parse_sqlite_header,
    read_sqlite_header,
)
from .text import (
    Pos,
    checksum_from_json,
    format_checksum,
    format_filename,
    format_timestamp,
    format_txid,
    parse_checksum,
    parse_filename,
    parse_timestamp,
    parse_txid,
    timestamp_to_datetime,
    txid_from_json,
)

__all__ = [
    "EMPTY_DB_CHECKSUM",
    "FLAG",
    "FLAG_COMPRESS_LZ4",
    "HEADER_SIZE",
    "PAGE_HEADER_SIZE",
    "PAGE_SIZES",
    "TRAILER_SIZE",
    "Decoder",
    "Encoder",
    "Header",
    "LTXError",
    "Pos",
    "PostApplyMismatch",
    "SQLiteHeader",
    "Trailer",
    "check_contiguous",
    "checksum_from_json",
    "compact",
    "crc64_update",
    "database_checksum",
    "decode_database",
    "diff_database",
    "encode_database",
    "fold",
    "format_checksum",
    "format_filename",
    "format_timestamp",
    "format_txid",
    "frame_checksum",
    "lock_pgno",
    "page_checksum",
    "parse_checksum",
    "parse_filename",
    "parse_sqlite_header",
    "parse_timestamp",
    "parse_txid",
    "read_sqlite_header",
    "timestamp_to_datetime",
    "txid_from_json",
    "verify",
]

"""Text and JSON forms of LTX values: TXIDs, checksums, positions, filenames and timestamps.

These follow ``superfly/ltx`` v0.3.14: 16 lower-case hex digits on output (upper case accepted
on parse, except in filenames), ``<txid>/<checksum>`` positions, ``<min>-<max>.ltx`` filenames and
millisecond UTC timestamps such as ``2023-11-14T22:13:20.123Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .errors import LTXError

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_FILENAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_txid(txid: int) -> str:
    """``%016x`` of a TXID."""
    return f"{txid:016x}"


def _parse_hex16(s: str, what: str) -> int:
    if len(s) != 16:
        raise LTXError(f'invalid formatted {what} length: "{s}"')
    if not _HEX16.fullmatch(s):
        raise LTXError(f'invalid {what} format: "{s}"')
    return int(s, 16)


def parse_txid(s: str) -> int:
    """Parse 16 hex digits (either case) into a TXID."""
    return _parse_hex16(s, "transaction id")


format_checksum = format_txid
"""``%016x`` of a checksum (the same text form as a TXID)."""


def parse_checksum(s: str) -> int:
    """Parse 16 hex digits (either case) into a checksum."""
    return _parse_hex16(s, "checksum")


def _from_json_hex(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, str):
        raise LTXError(f"cannot unmarshal {what} from JSON value")
    try:
        return _parse_hex16(value, "transaction id" if what == "TXID" else "checksum")
    except LTXError:
        raise LTXError(f'cannot parse {what} from JSON string: "{value}"') from None


def txid_from_json(value: Any) -> int:
    """Decode a TXID from its JSON value (a 16-hex string; ``null`` is 0)."""
    return _from_json_hex(value, "TXID")


def checksum_from_json(value: Any) -> int:
    """Decode a checksum from its JSON value (a 16-hex string; ``null`` is 0)."""
    return _from_json_hex(value, "checksum")


class Pos(NamedTuple):
    """A database position: the last TXID applied and the database checksum after it."""

    txid: int = 0
    post_apply_checksum: int = 0

    def __str__(self) -> str:
        return f"{self.txid:016x}/{self.post_apply_checksum:016x}"

    @classmethod
    def parse(cls, s: str) -> Pos:
        """Parse ``<txid16>/<checksum16>`` (the separator is not checked, as in Go)."""
        if len(s) != 33:
            raise LTXError(f'invalid formatted position length: "{s}"')
        return cls(parse_txid(s[:16]), parse_checksum(s[17:]))

    def to_json(self) -> dict[str, str]:
        """``{"TXID": …, "PostApplyChecksum": …}``, the Go field names LiteFS expects."""
        return {
            "TXID": format_txid(self.txid),
            "PostApplyChecksum": format_txid(self.post_apply_checksum),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Pos:
        """Decode a JSON position; keys match case-insensitively, as Go's decoder does."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise LTXError("cannot unmarshal position from JSON value")
        keys = {k.lower(): v for k, v in obj.items()}
        return cls(
            txid_from_json(keys.get("txid")),
            checksum_from_json(keys.get("postapplychecksum")),
        )


def format_filename(min_txid: int, max_txid: int) -> str:
    """``<min16>-<max16>.ltx``."""
    return f"{min_txid:016x}-{max_txid:016x}.ltx"


def parse_filename(name: str) -> tuple[int, int]:
    """Parse a bare ``<min16>-<max16>.ltx`` name (lower-case hex only) into (min, max)."""
    m = _FILENAME.fullmatch(name)
    if not m:
        raise LTXError(f"invalid ltx filename: {name}")
    return int(m.group(1), 16), int(m.group(2), 16)


def format_timestamp(ms: int) -> str:
    """Milliseconds since the epoch as UTC text with exactly 3 fractional digits and ``Z``."""
    # isoformat, unlike strftime("%Y"), writes years before 1000 with 4 digits.
    return timestamp_to_datetime(ms).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def parse_timestamp(s: str) -> int:
    """Parse an RFC 3339 timestamp that carries a zone into milliseconds (truncated, not rounded).

    Accepts ``2023-11-14T22:13:20Z``, ``…:20.123456789Z`` and ``…:20.123+02:00``; rejects text
    without a zone, a space instead of ``T``, lower-case ``t``/``z`` and invalid dates.
    """
    m = _RFC3339.fullmatch(s)
    if not m:
        raise LTXError(f'invalid timestamp "{s}": expected RFC 3339 with a zone, e.g. 2024-06-08T12:22:39Z')
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise LTXError(f'invalid timestamp "{s}": {e}') from None
    offset = timedelta()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            raise LTXError(f'invalid timestamp "{s}": time zone offset out of range')
        offset = sign * timedelta(hours=zh, minutes=zm)
    ms = int((frac + "000")[:3]) if frac else 0
    delta = dt - _EPOCH - offset  # on timedeltas: a zone may move the UTC time past year 1 or 9999
    return (delta.days * 86400 + delta.seconds) * 1000 + ms


def timestamp_to_datetime(ms: int) -> datetime:
    """An aware UTC datetime for milliseconds since the epoch; LTXError outside years 1 to 9999."""
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise LTXError(f"timestamp out of range: {ms}") from None

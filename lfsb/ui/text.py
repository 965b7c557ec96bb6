"""How the dashboard writes times, ages, sizes and levels."""

from __future__ import annotations

from ..ltx import format_timestamp


def fmt_time(ms: int | None) -> str:
    """UTC time to the millisecond."""
    return "—" if ms is None else format_timestamp(ms).replace("T", " ")


def fmt_age(ms: int | None, now: int) -> str:
    """How long ago, roughly."""
    if ms is None:
        return "never"
    seconds = max(now - ms, 0) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def fmt_size(n: int) -> str:
    """Bytes in binary units."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def level_name(level: int) -> str:
    """Where a level's files are: local L0, a compaction level, or the daily snapshot."""
    return {0: "L0 (local)", 9: "snapshot (L9)"}.get(level, f"L{level}")

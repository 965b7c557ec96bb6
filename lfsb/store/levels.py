"""Compaction levels as plain data: interval, retention, and when each next runs (wall clock)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Kind, LfsbError

SNAPSHOT_LEVEL = 9
MAX_LEVEL = 8
_YEAR1_OFFSET = 62135596800  # seconds from 0001-01-01 to the Unix epoch (Go's Truncate origin)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def config_error(message: str) -> LfsbError:
    """A bad setting (``EINVALIDCONFIG``)."""
    return LfsbError(Kind.VALIDATION, "EINVALIDCONFIG", message)


def parse_duration(text: str, setting: str) -> float:
    """Seconds in ``text`` such as ``10s``, ``5m``, ``1h30m``, ``30d`` or ``0``."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise config_error(f"{setting}: invalid duration {text!r} (use e.g. 10s, 5m, 1h, 30d)")
    return total


@dataclass(frozen=True)
class Level:
    """One compaction level: how often it runs and how long its files are kept (0: only while needed)."""

    level: int
    interval: float
    retention: float

    def next_run_at(self, now: float) -> float:
        """The next wall-clock boundary after ``now`` (Unix seconds), aligned as Go's Truncate."""
        since_year1 = now + _YEAR1_OFFSET
        return now - since_year1 % self.interval + self.interval


def parse_levels(text: str, setting: str = "LFSB_LEVELS") -> list[Level]:
    """Parse ``1=10s/1h,2=5m/30d,3=1h/30d``: levels 1.. in order, each ``interval/retention``."""
    levels = []
    for i, part in enumerate(filter(None, (p.strip() for p in text.split(","))), start=1):
        number, sep, rest = part.partition("=")
        interval, sep2, retention = rest.partition("/")
        if not sep or not sep2:
            raise config_error(f"{setting}: {part!r} is not of the form N=interval/retention")
        if number.strip() != str(i):
            raise config_error(f"{setting}: level {number.strip()!r} out of order, expected {i}")
        if i > MAX_LEVEL:
            raise config_error(f"{setting}: compaction level cannot exceed {MAX_LEVEL}")
        seconds = parse_duration(interval, setting)
        if seconds <= 0:
            raise config_error(f"{setting}: interval required for level {i}")
        levels.append(Level(i, seconds, parse_duration(retention, setting)))
    if not levels:
        raise config_error(f"{setting}: at least one compaction level is required")
    return levels

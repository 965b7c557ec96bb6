"""The timeline chart of a database as plain SVG geometry: restorable points placed by time (x) and
TXID (y), the database's size over time as a line, gaps marked; no JavaScript (each point is a link)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ltx import format_timestamp, format_txid
from ..store.overview import TimelinePoint
from .text import fmt_size, fmt_time, level_name

WIDTH, HEIGHT = 800, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 36
MAX_MARKS = 400
"""Most points drawn; a longer history is thinned evenly (the first, last and gap ends always stay)."""


@dataclass(frozen=True)
class Mark:
    """One drawn point: where, its TXID (hex), level and description."""

    x: float
    y: float
    txid: str
    level: int
    label: str


@dataclass(frozen=True)
class Chart:
    """Everything the template draws."""

    marks: list[Mark]
    size_line: str
    """SVG polyline points of the size series."""
    gaps: list[tuple[float, float]]
    """x ranges with unreachable TXIDs."""
    x_ticks: list[tuple[float, str, str]]
    """(x, time as text, text-anchor)."""
    y_ticks: list[tuple[float, int]]
    """(y, TXID)."""
    max_size: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom_y: int = HEIGHT - BOTTOM
    right_x: int = WIDTH - RIGHT


def _thin(points: list[TimelinePoint], keep: set[int]) -> list[TimelinePoint]:
    if len(points) <= MAX_MARKS:
        return points
    step = len(points) / MAX_MARKS
    chosen = {int(i * step) for i in range(MAX_MARKS)} | {0, len(points) - 1}
    return [p for i, p in enumerate(points) if i in chosen or p.txid in keep]


def build(points: list[TimelinePoint], gaps: list[tuple[TimelinePoint, TimelinePoint]]) -> Chart | None:
    """The chart of ``points`` (oldest first); None when there is nothing to draw."""
    if not points:
        return None
    t0, t1 = points[0].timestamp, points[-1].timestamp
    x0, x1 = points[0].txid, points[-1].txid
    span_t, span_x = max(t1 - t0, 1), max(x1 - x0, 1)
    max_size = max(p.size for p in points) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(ms: int) -> float:
        return round(LEFT + (ms - t0) / span_t * plot_w, 1) if t1 > t0 else LEFT + plot_w / 2

    def y_of(txid: int) -> float:
        return round(TOP + plot_h - (txid - x0) / span_x * plot_h, 1) if x1 > x0 else TOP + plot_h / 2

    def y_of_size(size: int) -> float:
        return round(TOP + plot_h - size / max_size * plot_h, 1)

    keep = {p.txid for gap in gaps for p in gap}
    shown = _thin(points, keep)
    marks = [
        Mark(
            x_of(p.timestamp),
            y_of(p.txid),
            format_txid(p.txid),
            p.level,
            f"TXID {format_txid(p.txid)} at {fmt_time(p.timestamp)}, {fmt_size(p.size)},"
            f" {level_name(p.level)}",
        )
        for p in shown
    ]
    size_line = " ".join(f"{x_of(p.timestamp)},{y_of_size(p.size)}" for p in shown)
    ticks = [t0 + span_t * i // 4 for i in range(5)] if t1 > t0 else [t0]
    cut = slice(11, 23) if span_t < 60_000 else slice(11, 16) if span_t < 86_400_000 else slice(5, 16)
    anchors = ["start", "middle", "middle", "middle", "end"] if len(ticks) > 1 else ["middle"]
    x_ticks = [
        (x_of(t), format_timestamp(t).replace("T", " ")[cut], a) for t, a in zip(ticks, anchors, strict=True)
    ]
    y_ticks = sorted(
        {(y_of(x0 + span_x * i // 4), x0 + span_x * i // 4) for i in range(5)} if x1 > x0 else []
    )
    return Chart(
        marks,
        size_line,
        [(x_of(a.timestamp), x_of(b.timestamp)) for a, b in gaps],
        x_ticks,
        y_ticks,
        max_size,
    )

"""Hand-built inline SVG plots (no plotting dependency): line charts and histograms.

All functions return an ``<svg>`` string sized in CSS pixels; every label is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence

import numpy as np

WIDTH, HEIGHT = 460, 320
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 50, 46


@dataclass(frozen=True)
class Series:
    """One line or bar series: ``x``/``y`` (same length) drawn in ``color``."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    step: bool = False  # draw as a right-continuous step (PR curves)


@dataclass(frozen=True)
class Marker:
    """A single labelled point (e.g. the operating point of the presence decision)."""

    label: str
    x: float
    y: float
    color: str


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"


class _Frame:
    """Maps data coordinates into the plot area and draws axes, grid and labels."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float]):
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1.0
        self.left, self.right = MARGIN_L, WIDTH - MARGIN_R
        self.top, self.bottom = MARGIN_T, HEIGHT - MARGIN_B

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, title: str, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> list[str]:
        out = [
            f'<text x="{WIDTH / 2:.0f}" y="18" text-anchor="middle" class="t">{escape(title)}</text>',
        ]
        for t in xticks:
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.bottom}" class="g"/>')
            out.append(f'<text x="{x:.1f}" y="{self.bottom + 15}" text-anchor="middle">{_fmt(t)}</text>')
        for t in yticks:
            y = self.py(t)
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" class="g"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        out.append(
            f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
            f'height="{self.bottom - self.top}" class="f"/>'
        )
        out.append(
            f'<text x="{(self.left + self.right) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(xlabel)}</text>'
        )
        cy = (self.top + self.bottom) / 2
        out.append(
            f'<text x="14" y="{cy:.0f}" text-anchor="middle" transform="rotate(-90 14 {cy:.0f})">{escape(ylabel)}</text>'
        )
        return out


def _svg(parts: list[str], label: str) -> str:
    style = (
        "<style>text{font:11px sans-serif;fill:#333}.t{font-weight:bold;font-size:13px}"
        ".g{stroke:#e4e4e4;stroke-width:1}.f{fill:none;stroke:#888;stroke-width:1}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">'
        + style
        + "".join(parts)
        + "</svg>"
    )


def _legend(items: Sequence[tuple[str, str]], note: str | None = None) -> list[str]:
    """One row of colour swatches between the title and the plot area."""
    out = []
    x = MARGIN_L
    for label, color in items:
        out.append(f'<rect x="{x}" y="29" width="12" height="10" fill="{color}" fill-opacity="0.8"/>')
        out.append(f'<text x="{x + 17}" y="38">{escape(label)}</text>')
        x += 17 + 6 * len(label) + 18
    if note:
        out.append(f'<text x="{WIDTH - MARGIN_R}" y="38" text-anchor="end">{escape(note)}</text>')
    return out


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    markers: Sequence[Marker] = (),
    note: str | None = None,
) -> str:
    """A unit-square line chart (x, y in [0, 1]), e.g. a precision–recall curve."""
    frame = _Frame((0.0, 1.0), (0.0, 1.02))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    parts = frame.axes(title, xlabel, ylabel, ticks, ticks)
    for s in series:
        xs, ys = list(s.x), list(s.y)
        if not xs:
            continue
        pts: list[tuple[float, float]] = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            if s.step and i > 0:
                pts.append((x, ys[i - 1]))
            pts.append((x, y))
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="2"/>')
    for m in markers:
        cx, cy = frame.px(m.x), frame.py(m.y)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{m.color}" stroke="#fff"/>')
    items = [(s.label, s.color) for s in series] + [(m.label, m.color) for m in markers]
    parts += _legend(items, note)
    return _svg(parts, title)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(start, hi + step * 1e-6, step)]


def histogram(
    title: str,
    groups: Sequence[tuple[str, Sequence[float], str]],
    *,
    bins: int = 30,
    xlabel: str = "score",
    note: str | None = None,
) -> str:
    """Overlaid histograms of several groups ``(label, values, color)``, each normalised
    to its own total (share of that group's values per bin), on shared bins."""
    arrays = [np.asarray(v, dtype=float) for _, v, _ in groups]
    allv = np.concatenate([a for a in arrays if a.size] or [np.zeros(0)])
    if allv.size == 0:
        frame = _Frame((0.0, 1.0), (0.0, 1.0))
        parts = frame.axes(title, xlabel, "share of detections", [], [])
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no detections</text>')
        return _svg(parts, title)
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    shares = []
    for a in arrays:
        counts, _ = np.histogram(a, bins=edges)
        shares.append(counts / max(a.size, 1))
    ymax = max(float(s.max()) for s in shares) * 1.1 or 1.0
    frame = _Frame((lo, hi), (0.0, ymax))
    parts = frame.axes(title, xlabel, "share of detections", _nice_ticks(lo, hi), _nice_ticks(0.0, ymax, 4))
    for (_label, _values, color), share in zip(groups, shares):
        for i, v in enumerate(share):
            if v <= 0:
                continue
            x0, x1 = frame.px(edges[i]), frame.px(edges[i + 1])
            y = frame.py(v)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                f'height="{frame.bottom - y:.1f}" fill="{color}" fill-opacity="0.5"/>'
            )
    items = [(f"{label} (n={len(values)})", color) for label, values, color in groups]
    parts += _legend(items, note)
    return _svg(parts, title)

"""Small inline-SVG charts for the HTML report: no plotting library, no external files.

A report must open anywhere, offline, years later, so the plots are drawn as SVG text
embedded in the page. Only what the report needs is here: line charts with a min-max band
on a log budget axis (or a linear one, for the risk score over queries), and a labelled
scatter plot. Points that are not numbers (a budget a stopped attack never reached) are
left out of their line. Every mark carries a <title>, which
browsers show as a tooltip with the exact number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
W, H = 420, 270
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 30, 46


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


class _Frame:
    """Maps data to pixels and draws axes, ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float],
                 log_x: bool) -> None:
        self.log_x = log_x
        self.x0, self.x1 = (math.log10(v) for v in x_range) if log_x else x_range
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        self.y0, self.y1 = y_range

    def px(self, x: float) -> float:
        v = math.log10(x) if self.log_x else x
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(self, title: str, x_label: str, y_label: str, x_ticks: Sequence[float],
             y_ticks: Sequence[float], x_tick_text: Sequence[str]) -> list[str]:
        out = [f'<text x="{W / 2}" y="18" text-anchor="middle" class="t">{escape(title)}</text>']
        for y in y_ticks:
            py = self.py(y)
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py:.1f}" y2="{py:.1f}" '
                       'class="g"/>')
            out.append(f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">'
                       f'{_fmt(y) if y not in (0, 1) else int(y)}</text>')
        for x, text in zip(x_ticks, x_tick_text, strict=True):
            px = self.px(x)
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{H - BOTTOM}" '
                       'class="g"/>')
            out.append(f'<text x="{px:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                       f'{escape(text)}</text>')
        out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
                   f'height="{H - TOP - BOTTOM}" class="f"/>')
        out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 8}" text-anchor="middle">'
                   f'{escape(x_label)}</text>')
        out.append(f'<text transform="translate(13,{(TOP + H - BOTTOM) / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
        return out


def _svg(body: list[str], label: str) -> str:
    style = ("<style>text{font:11px sans-serif;fill:#333}.t{font-weight:bold;font-size:12px}"
             ".g{stroke:#e4e4e4}.f{fill:none;stroke:#999}</style>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
            f'height="{H}" role="img" aria-label="{escape(label)}">{style}'
            + "".join(body) + "</svg>")


def _nice_step(span: float) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about five ticks."""
    raw = max(span, 1e-9) / 5
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               y_range: tuple[float, float] = (0.0, 1.0), log_x: bool = True,
               markers: bool = True) -> str:
    """Lines with optional min-max bands: over a log x axis with ticks at the x values
    (budgets), or over a linear axis from 0 with round ticks (`log_x=False`)."""
    clean = [_finite(s) for s in series]
    xs = sorted({x for s in clean for x in s.xs})
    if log_x:
        frame = _Frame((xs[0], xs[-1]) if xs else (1.0, 10.0), y_range, log_x=True)
        x_ticks: list[float] = list(xs)
    else:
        step = _nice_step(xs[-1] if xs else 1.0)
        top = step * max(1, math.ceil((xs[-1] if xs else 1.0) / step))
        frame = _Frame((0.0, top), y_range, log_x=False)
        x_ticks = [i * step for i in range(round(top / step) + 1)]
    body = frame.axes(title, x_label, y_label, x_ticks, [0, 0.2, 0.4, 0.6, 0.8, 1.0],
                      [f"{int(x):,}" for x in x_ticks])
    for s in clean:
        pts = [(frame.px(x), frame.py(y)) for x, y in zip(s.xs, s.ys, strict=True)]
        if s.low is not None and s.high is not None and len(pts) > 1:
            upper = [(frame.px(x), frame.py(v)) for x, v in zip(s.xs, s.high, strict=True)]
            lower = [(frame.px(x), frame.py(v)) for x, v in zip(s.xs, s.low, strict=True)]
            poly = " ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower[::-1])
            body.append(f'<polygon points="{poly}" fill="{s.color}" fill-opacity="0.12" '
                        'stroke="none"/>')
        line = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        body.append(f'<polyline points="{line}" fill="none" stroke="{s.color}" '
                    f'stroke-width="2" data-series="{escape(s.name)}">'
                    f'<title>{escape(s.name)}</title></polyline>')
        for (a, b), x, y in zip(pts, s.xs, s.ys, strict=True):
            body.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="{3 if markers else 1.5}" '
                        f'fill="{s.color}"><title>{escape(s.name)}: {y:.3f} at {int(x):,}'
                        '</title></circle>')
    return _svg(body, title)


def _finite(s: Series) -> Series:
    """The series without the points whose value is not a number."""
    keep = [i for i, y in enumerate(s.ys) if math.isfinite(y)]
    if len(keep) == len(s.ys):
        return s

    def pick(values: Sequence[float] | None) -> list[float] | None:
        return None if values is None else [values[i] for i in keep]

    return Series(s.name, [s.xs[i] for i in keep], [s.ys[i] for i in keep], s.color,
                  pick(s.low), pick(s.high))


def scatter_chart(points: Sequence[Point], *, title: str, x_label: str, y_label: str,
                  y_range: tuple[float, float] = (0.0, 1.0),
                  x_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Labelled points on linear axes; labels of coinciding points stack downwards."""
    frame = _Frame(x_range, y_range, log_x=False)
    ticks = [[r[0] + i * (r[1] - r[0]) / 5 for i in range(6)] for r in (x_range, y_range)]
    body = frame.axes(title, x_label, y_label, ticks[0], ticks[1],
                      [_fmt(x) for x in ticks[0]])
    placed: list[tuple[float, float]] = []
    for p in points:
        a = frame.px(min(max(p.x, x_range[0]), x_range[1]))
        b = frame.py(min(max(p.y, y_range[0]), y_range[1]))
        dy = 4.0
        while any(abs(a - u) < 60 and abs(b + dy - v) < 11 for u, v in placed):
            dy += 11  # stack labels of points that sit on top of each other
        placed.append((a, b + dy))
        anchor = "end" if a > W - 90 else "start"
        body.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="5" fill="{p.color}"><title>'
                    f'{escape(p.label)}: protection {p.x:.3f}, benign accuracy {p.y:.3f}'
                    '</title></circle>')
        body.append(f'<text x="{a + (8 if anchor == "start" else -8):.1f}" y="{b + dy:.1f}" '
                    f'text-anchor="{anchor}">{escape(p.label)}</text>')
    return _svg(body, title)

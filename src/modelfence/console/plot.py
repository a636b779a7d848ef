"""A risk-over-time line as server-rendered SVG: no script, no style attribute, so it draws
under the console's Content-Security-Policy, and it names itself (`<title>`, `<desc>`) for
screen readers; the page also shows the same points as a table.

The geometry is computed here and the template writes the elements, so Jinja's escaping
covers every text and the numbers are plain floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT = 640.0, 200.0
_LEFT, _RIGHT, _TOP, _BOTTOM = 44.0, 12.0, 12.0, 28.0


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # pixel position along its axis
    label: str
    anchor: str = "middle"  # SVG text-anchor: the ends of the time axis stay inside


@dataclass(frozen=True, slots=True)
class Plot:
    """What the template draws: a polyline, its y ticks (risk), x ticks (time), the band
    starts as dashed rules, and a one-line description of the series."""

    points: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    rules: list[Tick]
    description: str
    width: float = WIDTH
    height: float = HEIGHT
    left: float = _LEFT
    bottom: float = HEIGHT - _BOTTOM
    right: float = WIDTH - _RIGHT


def risk_plot(series: Sequence[tuple[float, float]], bands: Sequence[tuple[float, str]]
              ) -> Plot | None:
    """A plot of (unix time, risk) points, oldest first, with the bands' starts (times
    labelled HH:MM:SS UTC); None without a point."""
    if not series:
        return None

    def label(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")

    t0, t1 = series[0][0], series[-1][0]
    span = max(t1 - t0, 1e-9)
    inner_w, inner_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(ts: float) -> float:
        return _LEFT + (inner_w * (ts - t0) / span if t1 > t0 else inner_w / 2)

    def y(risk: float) -> float:
        return _TOP + inner_h * (1.0 - min(max(risk, 0.0), 1.0))

    points = " ".join(f"{x(t):.1f},{y(r):.1f}" for t, r in series)
    y_ticks = [Tick(y(v), f"{v:.1f}") for v in (0.0, 0.5, 1.0)]
    x_ticks = ([Tick(x(t0), label(t0), "start"), Tick(x(t1), label(t1), "end")]
               if t1 > t0 else [Tick(x(t0), label(t0))])
    rules = [Tick(y(start), name) for start, name in bands if 0.0 < start <= 1.0]
    peak = max(r for _, r in series)
    description = (f"{len(series)} answers from {label(t0)} to {label(t1)} UTC; risk from "
                   f"{series[0][1]:.2f} to {series[-1][1]:.2f}, highest {peak:.2f}")
    return Plot(points, y_ticks, x_ticks, rules, description)

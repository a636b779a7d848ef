"""What the classifier monitor concludes about a caller: its settings, a `Risk` and the
episode `Crossing`s it reports, and `combine`, the noisy-OR of detector readings.

The detectors are the monitor's evidence; what becomes of it is the engine every protocol
shares (`modelfence.risk`): detector scores are calibrated alike and combine by noisy-OR
(`risk.combine`), the episodes hold the effective risk (`risk.episodes`), and an episode's
start is one `Crossing` (`risk.crossing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from ..errors import ConfigurationError
from ..risk import NO_EPISODE, Episode, check_hysteresis
from ..risk import Crossing as _Crossing
from ..risk import Kind as Kind
from ..risk.combine import combine as combine_parts
from .detectors import DETECTORS, RETIRED, Reading

#: Detectors whose evidence is of synthetic queries, which hold an episode (`hold_s`): rows
#: off the data, abnormal distances between a caller's rows, rows off the data's own
#: structure, near-copies that walk across the boundary (names not among the monitor's
#: detectors, e.g. one a future version renames, are ignored).
STICKY = ("ood", "prada", "synthetic", "naturalness", "flips")


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's own options, made from `config.MonitorSettings` (`monitor:`) by the
    monitor service, or given directly by offline evaluation and tests."""

    detectors: tuple[str, ...] = ("prada", "boundary", "synthetic", "flips", "ood", "coverage",
                                  "volume")
    threshold: float = 0.5  # raw risk at or above which a caller's episode starts
    max_principals: int = 10_000  # per table: principals, and tenants
    release: float | None = None  # raw risk below which an episode may end; None: 0.6 x threshold
    min_dwell_s: float = 600.0  # an episode lasts at least this long
    hold_s: float = 86_400.0  # how long synthetic-query evidence keeps an episode going
    sticky: tuple[str, ...] = STICKY  # detectors whose evidence is of synthetic queries

    def __post_init__(self) -> None:
        retired = [n for n in self.detectors if n in RETIRED]
        if retired:
            raise ConfigurationError(f"monitor detector {retired[0]!r} was retired: "
                                     f"{RETIRED[retired[0]]}")
        unknown = sorted(set(self.detectors) - set(DETECTORS))
        if unknown:
            raise ConfigurationError(
                f"unknown monitor detector(s) {unknown}; use: {', '.join(sorted(DETECTORS))}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigurationError("monitor threshold must be in (0, 1]")
        check_hysteresis(self.threshold, self.release, self.min_dwell_s, self.hold_s)
        if self.max_principals < 1:
            raise ConfigurationError("monitor max_principals must be at least 1")


@dataclass(frozen=True)
class Risk:
    """A caller's risk, whether it is flagged, and each detector's part in it.

    `score` is the effective risk the gateway acts on (held by the episode's hysteresis),
    `raw` the detectors' combined score of the last observation, `flagged` whether an
    episode is on (`episode` says since when and any sticky hold).
    """

    score: float
    flagged: bool
    queries: int
    readings: dict[str, Reading] = field(default_factory=dict)
    raw: float = 0.0
    episode: Episode = NO_EPISODE

    def explain(self) -> str:
        parts = [f"{n} {r.score:.2f} ({r.why})" for n, r in self.readings.items() if r.score > 0]
        return "; ".join(parts) or "no detector raised"


NO_RISK = Risk(0.0, False, 0)


#: An episode of a principal or tenant that started with an observe (`risk.crossings`).
Crossing: TypeAlias = _Crossing[Risk]


def combine(readings: dict[str, Reading], only: frozenset[str] | None = None) -> float:
    """Noisy-OR of the detector scores (of those named in `only`, when given)."""
    return combine_parts({n: r.score for n, r in readings.items()}, only)

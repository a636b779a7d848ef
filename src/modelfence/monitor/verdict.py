"""What the classifier monitor concludes about a caller: its settings, a `Risk` and the
episode `Crossing`s it reports, and `combine`, the noisy-OR of detector scores.

Detector scores are calibrated alike (0 for what benign traffic shows, 1 for far beyond it),
so they combine by noisy-OR, 1 - prod(1 - s_i): any one detector that is sure makes the
risk sure, and several half-sure detectors add up, as independent evidence would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigurationError
from .detectors import DETECTORS, RETIRED, Reading
from .episodes import NO_EPISODE, STICKY, Episode, check_hysteresis

Kind = Literal["principal", "tenant"]


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


@dataclass(frozen=True)
class Crossing:
    """An episode that started with this observe: one per alert to raise.

    A principal's episode names its `tenant`; when the tenant's episode started with the same
    observation, `tenant_risk` carries it and there is no second Crossing for the tenant. A
    tenant's episode is a Crossing of its own only when the principal that sent the
    observation is not in an episode (evidence spread over keys, a Sybil): otherwise the
    principal's alert already told of it.
    """

    subject_kind: Kind
    subject: str
    risk: Risk
    tenant: str | None = None
    tenant_risk: Risk | None = None


def combine(readings: dict[str, Reading], only: frozenset[str] | None = None) -> float:
    """Noisy-OR of the detector scores (of those named in `only`, when given)."""
    keep = 1.0
    for n, r in readings.items():
        if only is None or n in only:
            keep *= 1.0 - min(1.0, max(0.0, r.score))
    return 1.0 - keep

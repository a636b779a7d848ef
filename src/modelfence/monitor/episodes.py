"""Episodes: when a caller is flagged, for how long, and the risk the gateway acts on.

The detectors' combined score (the *raw* risk) moves with every observation; the gateway
must not. A subject (a principal or a tenant) has a *held level*, its effective risk, which
rises at once with the raw risk and falls only when the raw risk has stayed well below it:

- an **episode** starts when the raw risk reaches `threshold`; during it the effective risk
  is the highest raw risk seen since it started (never below the threshold);
- it ends only when the raw risk is below `release` (default 0.6 x threshold), at least
  `min_dwell_s` after it started, and after any sticky hold; the level then falls to the
  raw risk;
- **sticky hold**: whenever, during an episode, the readings of the `sticky` detectors alone
  (evidence of synthetic queries: rows off the data, abnormal distances between a caller's
  rows, rows off the data's own structure, near-copies that walk across the boundary)
  combine to the threshold, the episode is held for `hold_s` from then, so a caller flagged
  for synthetic queries stays flagged even if its evidence decays;
- below the threshold the same rule in proportion: the level falls to the raw risk only
  when that is below `release / threshold` of the level, `min_dwell_s` after it last rose.

Why at most two band changes per episode: during an episode the effective risk never falls
(it can only rise with new evidence), so however the raw risk oscillates, the band changes
once on entry and once on exit, plus one per band edge *above* the threshold that the risk
climbs past (escalation, never back). With no band edge above the threshold (the
recommended bands) that is at most 2. Below the threshold a level that rose falls at most
once per `min_dwell_s`, and not at all while the raw risk stays above `release / threshold`
of it, so a raw risk wobbling around a lower band's edge changes that band once.

Everything here is a function of the observation timestamps and the readings, never of the
clock: replicas that apply the same observations in the same order hold the same episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

#: Detectors whose evidence is of synthetic queries (names not among the monitor's detectors,
#: e.g. one a future version renames, are ignored).
STICKY = ("ood", "prada", "synthetic", "naturalness", "flips")

#: `release` when none is set: the share of the threshold the raw risk must fall below.
RELEASE_SHARE = 0.6

NEVER = -math.inf


def check_hysteresis(threshold: float, release: float | None, min_dwell_s: float,
                     hold_s: float) -> None:
    """Refuse settings that would make episodes meaningless, in one line each."""
    if release is not None and not (math.isfinite(release) and 0.0 <= release < threshold):
        raise ConfigurationError(
            f"monitor release must be at least 0 and below the threshold ({threshold:g}), "
            f"got {release}")
    if not (math.isfinite(min_dwell_s) and min_dwell_s >= 0.0):
        raise ConfigurationError(f"monitor min_dwell_s must be >= 0, got {min_dwell_s}")
    if not (math.isfinite(hold_s) and hold_s >= 0.0):
        raise ConfigurationError(f"monitor hold_s must be >= 0, got {hold_s}")


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """The rules, resolved once from the settings."""

    threshold: float
    release: float
    min_dwell_s: float
    hold_s: float
    sticky: frozenset[str]

    @classmethod
    def of(cls, settings: Any) -> Hysteresis:
        """From a `MonitorSettings` (threshold, release, min_dwell_s, hold_s, sticky)."""
        release = (RELEASE_SHARE * settings.threshold if settings.release is None
                   else settings.release)
        return cls(float(settings.threshold), float(release), float(settings.min_dwell_s),
                   float(settings.hold_s), frozenset(settings.sticky))


@dataclass(frozen=True, slots=True)
class Episode:
    """One subject's held level and episode; `since` is `NEVER` outside an episode."""

    level: float = 0.0  # the effective risk
    raised_at: float = NEVER  # when the level last rose
    since: float = NEVER  # when the current episode started
    hold_until: float = NEVER  # the sticky hold's end

    @property
    def active(self) -> bool:
        return self.since > NEVER

    def as_row(self) -> tuple[float, float, float, float]:
        """For snapshots: four floats."""
        return (self.level, self.raised_at, self.since, self.hold_until)

    @classmethod
    def from_row(cls, row: Any) -> Episode:
        level, raised_at, since, hold_until = (float(v) for v in row)
        if not (0.0 <= level <= 1.0) or math.isnan(raised_at + since + hold_until):
            raise ConfigurationError("monitor snapshot's episode state is out of range")
        return cls(level, raised_at, since, hold_until)


NO_EPISODE = Episode()


def step(ep: Episode, raw: float, synthetic: float, now: float,
         rules: Hysteresis) -> tuple[Episode, bool]:
    """The episode after an observation at `now` whose raw risk is `raw` (`synthetic`: the
    sticky detectors' combined score alone); and whether an episode started with it."""
    level, raised_at, since, hold_until = ep.level, ep.raised_at, ep.since, ep.hold_until
    active = since > NEVER
    if raw >= level:
        if raw > level:
            level, raised_at = raw, now
    elif active:
        if raw < rules.release and now - since >= rules.min_dwell_s and now >= hold_until:
            level, raised_at, since, hold_until, active = raw, now, NEVER, NEVER, False
    elif (raw < level * rules.release / rules.threshold
          and now - raised_at >= rules.min_dwell_s):
        level, raised_at = raw, now
    started = not active and level >= rules.threshold
    if started:
        since, active = now, True
    if active and synthetic >= rules.threshold:
        hold_until = max(hold_until, now + rules.hold_s)
    if (level, raised_at, since, hold_until) == (ep.level, ep.raised_at, ep.since,
                                                 ep.hold_until):
        return ep, started  # most observations change nothing: no new object to make
    return Episode(level, raised_at, since, hold_until), started

"""Episodes: when a caller is flagged, for how long, and the risk the gateway acts on.

One set of rules for every protocol: the classifier monitor and the LLM risk book each
extract their own evidence, combine it (`risk.combine`) and step each subject's episode
here. The combined score (the *raw* risk) moves with every observation; the gateway
must not. A subject (a principal or a tenant) has a *held level*, its effective risk, which
rises at once with the raw risk and falls only when the raw risk has stayed well below it:

- an **episode** starts when the raw risk reaches `threshold`; during it the effective risk
  is the highest raw risk seen since it started (never below the threshold);
- it ends only when the raw risk is below `release` (the monitor's default: 0.6 x
  threshold), at least `min_dwell_s` after it started, and after any sticky hold; the
  level then falls to the raw risk;
- **sticky hold**: whenever, during an episode, the parts named `sticky` alone combine to
  the threshold (for the monitor: the detectors that see synthetic queries, `monitor.verdict.
  STICKY`), the episode is held for `hold_s` from then, so a caller flagged for synthetic
  queries stays flagged even if its evidence decays;
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
A risk read between observations (`view`) is what the next observation at that time would
make of it, without changing the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

#: `release` when none is set: the share of the threshold the raw risk must fall below.
RELEASE_SHARE = 0.6

NEVER = -math.inf


def check_hysteresis(threshold: float, release: float | None, min_dwell_s: float,
                     hold_s: float, *, owner: str = "monitor") -> None:
    """Refuse settings that would make episodes meaningless, in one line each (`owner`:
    whose settings, for the message)."""
    if release is not None and not (math.isfinite(release) and 0.0 <= release < threshold):
        raise ConfigurationError(
            f"{owner} release must be at least 0 and below the threshold ({threshold:g}), "
            f"got {release}")
    if not (math.isfinite(min_dwell_s) and min_dwell_s >= 0.0):
        raise ConfigurationError(f"{owner} min_dwell_s must be >= 0, got {min_dwell_s}")
    if not (math.isfinite(hold_s) and hold_s >= 0.0):
        raise ConfigurationError(f"{owner} hold_s must be >= 0, got {hold_s}")


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
        """From settings with threshold, release (None: `RELEASE_SHARE` of the threshold),
        min_dwell_s, hold_s and sticky, such as the monitor's `MonitorSettings`."""
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
            raise ConfigurationError("a snapshot's episode state is out of range")
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


def view(ep: Episode, raw: float, now: float, rules: Hysteresis) -> Episode:
    """The episode as an observation at `now` of raw risk `raw` would leave it (no sticky
    evidence), for reading a risk between observations without changing the state."""
    return step(ep, raw, 0.0, now, rules)[0]

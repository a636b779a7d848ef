"""The recommended graduated response: the configuration README quotes and the corpus measures.

Two bands, so a caller's answers change at most twice per episode (in when it is flagged,
out when it is released): the monitor holds a flagged caller's risk at or above the
threshold for the whole episode (`risk.episodes`), and no band edge lies above it.

- ``standard`` (risk below the threshold): the model's answers, untouched. An honest caller
  who is never flagged pays nothing.
- ``flagged`` (from the threshold), ordered by what it costs an honest caller: first fewer
  answers, the quota's `risk_curve` (`RECOMMENDED_RISK_CURVE`): each request costs double, so
  a flagged caller gets half its rate and spends its budgets twice as fast (four times at
  certainty); an honest caller loses only time. Then misinformation on off-distribution rows
  only: ``misinfo:1`` lies only beyond the monitor's own out-of-distribution radius (s > 1,
  where 1% of the model's data lies), never on an in-distribution row because its sender was
  flagged, with a keyed lie independent of the true answer.

Why the flagged band shows nothing: its answers have the same look as the standard band's
(full-precision probabilities, both outputs), and a lie keeps the answer's confidence
profile. A band that rounds or withholds probabilities announces itself in its answers'
decimal grid, and a thief that sees it has been flagged can leave those answers out of its
training; rounding and labels-only also do nothing against a label-only thief (the trade-off
table in README), while costing honest callers precision. So no output-format step.

The monitor's hysteresis (see `risk.episodes` for the rules):

- ``threshold`` 0.5: detector scores are calibrated alike (0 for benign traffic, 1 for far
  beyond it) and combined by noisy-OR, so 0.5 is one detector half-sure or several less.
- ``release`` 0.3 (0.6 x the threshold): the raw risk must fall well below the entry level
  before an episode may end, a gap wider than one detector's reading moves between windows,
  so evidence that wobbles around 0.5 cannot end and restart episodes.
- ``min_dwell_s`` 600: an episode lasts at least ten minutes, longer than the detectors'
  short windows, so a burst that flags a caller is not forgotten by the next quiet minute.
- ``hold_s`` 86,400 with ``sticky`` detectors, those whose evidence is of synthetic queries
  (``ood``: rows off the data; ``prada``: abnormal distances between a caller's rows;
  ``synthetic``/``naturalness``: rows off the data's own structure; ``flips``: near-copies of
  its rows that change class more often than re-reads do, a walk or bisection across the
  boundary): a caller flagged for synthetic queries stays flagged for a day after the last
  time that evidence alone reached the threshold, even if it then sends natural rows to
  dilute it. Volume, coverage and
  boundary evidence (natural-data and active-learning thieves, and busy honest callers) is
  not sticky: it ends with the dwell. Names not among the monitor's detectors are ignored.

None of these numbers was fitted to a data set; the corpus (``modelfence monitor evaluate
--suite``) measures them on victims and callers they were not chosen on.
"""

from __future__ import annotations

from typing import Any

#: (from_risk, defense, band name), ordered by what they cost an honest caller.
RECOMMENDED_BANDS: tuple[tuple[float, str, str], ...] = (
    (0.0, "none", "standard"),
    (0.5, "misinfo:1", "flagged"),
)

#: The monitor's settings (``MonitorSettings(**RECOMMENDED_MONITOR)``); detectors: its default.
RECOMMENDED_MONITOR: dict[str, Any] = {
    "threshold": 0.5,
    "release": 0.3,
    "min_dwell_s": 600.0,
    "hold_s": 86_400.0,
    "sticky": ("ood", "prada", "synthetic", "naturalness", "flips"),
}

#: The quota's `risk_curve` (risk, cost per request): from the threshold a flagged caller
#: pays double (half its rate, its budget spent twice as fast), four times at certainty.
RECOMMENDED_RISK_CURVE: tuple[tuple[float, float], ...] = (
    (0.0, 1.0), (0.49, 1.0), (0.5, 2.0), (1.0, 4.0))


def recommended_shaping() -> list[dict[str, Any]]:
    """The bands as a model's ``shaping:`` list in the configuration file."""
    return [{"from_risk": r, "defense": d, "name": n} for r, d, n in RECOMMENDED_BANDS]

"""One risk engine for every protocol: combine, episodes, crossings and the risk source.

Each protocol extracts its own evidence of extraction (the classifier monitor's detector
readings, the LLM risk book's kinds of evidence); what they share lives here: the noisy-OR
that makes the parts one raw risk (`combine`), the episode rules that hold the effective
risk and say when a caller is flagged (`episodes`), the one alert per episode for a
principal and its tenant (`crossing`), and the guard that puts the risk on a call
(`source`).
"""

from .combine import combine, combine_with, noisy_or
from .crossing import Alert, Assessed, Crossing, Kind, alert_for, crossings
from .episodes import NO_EPISODE, Episode, Hysteresis, check_hysteresis, step, view
from .source import PinFloors, PinGuard, RiskGuard, RiskSource

__all__ = ["NO_EPISODE", "Alert", "Assessed", "Crossing", "Episode", "Hysteresis", "Kind",
           "PinFloors", "PinGuard", "RiskGuard", "RiskSource", "alert_for",
           "check_hysteresis", "combine", "combine_with", "crossings", "noisy_or", "step",
           "view"]

"""The noisy-OR of named parts: how every protocol's evidence becomes one raw risk.

Parts are calibrated alike (0 for what honest traffic shows, 1 for far beyond it), so they
combine by noisy-OR, 1 - prod(1 - s_i): any one part that is sure makes the risk sure, and
several half-sure parts add up, as independent evidence would. The classifier monitor's
parts are its detectors' readings, the LLM risk book's its kinds of evidence; both combine
here, so a caller's raw risk means the same on either protocol. A part outside [0, 1] is
clamped (NaN counts as 0). These run on every observation and every LLM request's `peek`:
plain loops, with the clamp's calls only for a part out of range.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping


def noisy_or(scores: Iterable[float]) -> float:
    """1 - prod(1 - s), each score clamped to [0, 1] first."""
    keep = 1.0
    for s in scores:
        keep *= 1.0 - (s if 0.0 <= s <= 1.0 else min(1.0, max(0.0, s)))
    return 1.0 - keep


def combine(parts: Mapping[str, float], only: Collection[str] | None = None) -> float:
    """Noisy-OR of the parts (of those named in `only`, when given)."""
    if only is None:
        return noisy_or(parts.values())
    return noisy_or([s for n, s in parts.items() if n in only])


def combine_with(parts: Mapping[str, float], sticky: Collection[str]) -> tuple[float, float]:
    """In one pass, `combine(parts)` and `combine(parts, sticky)`: the raw risk and the
    sticky parts' own (what holds an episode, see `risk.episodes`)."""
    keep = keep_sticky = 1.0
    for n, s in parts.items():
        left = 1.0 - (s if 0.0 <= s <= 1.0 else min(1.0, max(0.0, s)))
        keep *= left
        if n in sticky:
            keep_sticky *= left
    return 1.0 - keep, 1.0 - keep_sticky

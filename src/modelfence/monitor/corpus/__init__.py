"""The efficacy corpus: victims nobody tuned on, honest callers and thieves, in two halves.

Detectors and defaults are tuned on the ``dev`` half; the ``test`` half (other data, other
families, other behaviour settings) is what gets reported.
"""

from .behaviours import BEHAVIOURS, Behaviour, CallerStream, behaviours, generate
from .victims import VICTIMS, CorpusWorld, VictimSpec, build_world, victims

__all__ = ["BEHAVIOURS", "VICTIMS", "Behaviour", "CallerStream", "CorpusWorld", "VictimSpec",
           "behaviours", "build_world", "generate", "victims"]

"""The efficacy corpus: victims nobody tuned on, honest callers and thieves, in two halves.

Detectors and defaults are tuned on the ``dev`` half; the ``test`` half (other data, other
families, other behaviour settings) is what gets reported.
"""

from .behaviours import BEHAVIOURS, Behaviour, CallerStream, behaviours, generate
from .harness import Gateway, Replay
from .run import CellResult, CorpusRun, plan
from .victims import VICTIMS, CorpusWorld, VictimSpec, build_world, victims

__all__ = ["BEHAVIOURS", "VICTIMS", "Behaviour", "CallerStream", "CellResult", "CorpusRun",
           "CorpusWorld", "Gateway", "Replay", "VictimSpec", "behaviours", "build_world",
           "generate", "plan", "victims"]

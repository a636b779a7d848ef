"""Output shaping: defenses that change what a caller learns from a classifier's answer.

Each defense is a small object over an ``[n, classes]`` probability matrix (see
`shaping.base.Defense`); `parse_defense` reads the short forms used on the command line
and in reports (``none``, ``round:2``, ``topk:3``, ``labels``, ``rsig:0.8,1.2``,
``noise:0.5``). The red team applies them in-process to measure what they cost a thief and
a benign caller; the gateway's output shaping uses the same objects.
"""

from .base import Defense, LabelOnly, NoDefense, Rounding, TopK, as_probabilities
from .keyed_noise import KeyedNoise, noise_matrix
from .reverse_sigmoid import ReverseSigmoid, ranking_flip, reverse_sigmoid
from .spec import DEFAULT_DEFENSES, parse_defense

__all__ = [
    "DEFAULT_DEFENSES",
    "Defense",
    "KeyedNoise",
    "LabelOnly",
    "NoDefense",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "as_probabilities",
    "noise_matrix",
    "parse_defense",
    "ranking_flip",
    "reverse_sigmoid",
]

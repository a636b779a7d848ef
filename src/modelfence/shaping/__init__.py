"""Output shaping: defenses that change what a caller learns from a classifier's answer.

Each defense is a small object over an ``[n, classes]`` probability matrix (see
`shaping.base.Defense`); `parse_defense` reads the short forms used on the command line
and in reports (``none``, ``round:2``, ``topk:3``, ``labels``, ``rsig:0.8,1.2``,
``noise:0.5``, ``misinfo:1.0``, and chains such as ``rsig:0.9,1.1+noise:0.5``). Adaptive
misinformation answers off-distribution queries with keyed lies and needs the monitor's
`Summary`. `modelfence.evaluation.tradeoff` (offline, built on the red team) measures what
each defense costs a thief and a benign caller (``modelfence shaping tradeoff``).
The red team applies the defenses in-process to measure what they cost a thief and a
benign caller; the gateway's output shaping uses the same objects.
"""

from .base import Defense, LabelOnly, NoDefense, Rounding, TopK, as_probabilities, shaped_labels
from .chain import Chain
from .keyed_noise import KeyedNoise, noise_matrix
from .misinformation import AdaptiveMisinformation, keyed_offsets
from .reverse_sigmoid import ReverseSigmoid, ranking_flip, reverse_sigmoid
from .spec import DEFAULT_DEFENSES, parse_defense

__all__ = [
    "DEFAULT_DEFENSES",
    "AdaptiveMisinformation",
    "Chain",
    "Defense",
    "KeyedNoise",
    "LabelOnly",
    "NoDefense",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "as_probabilities",
    "keyed_offsets",
    "noise_matrix",
    "parse_defense",
    "ranking_flip",
    "reverse_sigmoid",
    "shaped_labels",
]

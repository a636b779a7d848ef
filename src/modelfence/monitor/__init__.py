"""Extraction monitoring: per-caller detectors, a combined risk score, and its explanation."""

from .detectors import (
    DETECTORS,
    BoundaryProbing,
    Coverage,
    Detector,
    DistanceNormality,
    NearDuplicates,
    OutOfDistribution,
    Reading,
)
from .score import Monitor, MonitorSettings, Risk, combine
from .summary import Summary

__all__ = [
    "DETECTORS",
    "BoundaryProbing",
    "Coverage",
    "Detector",
    "DistanceNormality",
    "Monitor",
    "MonitorSettings",
    "NearDuplicates",
    "OutOfDistribution",
    "Reading",
    "Risk",
    "Summary",
    "combine",
]

"""Extraction monitoring: per-caller detectors, a combined risk score, and its explanation."""

from .detectors import (
    DETECTORS,
    BoundaryProbing,
    Coverage,
    Detector,
    DistanceNormality,
    NearDuplicates,
    OutOfDistribution,
    PeerStats,
    Reading,
    VolumeVelocity,
)
from .score import Crossing, Monitor, MonitorSettings, Risk, combine
from .summary import Summary

__all__ = [
    "DETECTORS",
    "BoundaryProbing",
    "Coverage",
    "Crossing",
    "Detector",
    "DistanceNormality",
    "Monitor",
    "MonitorSettings",
    "NearDuplicates",
    "OutOfDistribution",
    "PeerStats",
    "Reading",
    "Risk",
    "Summary",
    "VolumeVelocity",
    "combine",
]

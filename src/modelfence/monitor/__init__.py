"""Extraction monitoring: per-caller detectors, a combined risk score, and its explanation."""

from .detectors import (
    DETECTORS,
    BoundaryProbing,
    Coverage,
    Detector,
    DistanceNormality,
    Flips,
    OutOfDistribution,
    PeerStats,
    Reading,
    Synthetic,
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
    "Flips",
    "Monitor",
    "MonitorSettings",
    "OutOfDistribution",
    "PeerStats",
    "Reading",
    "Risk",
    "Summary",
    "Synthetic",
    "VolumeVelocity",
    "combine",
]

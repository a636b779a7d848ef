"""Watermarked answers and ownership verification (DAWN-style, Szyller et al. 2021).

For scripts::

    from modelfence.watermark import Keyring, Watermarker, WatermarkedOracle, verify_ownership

The gateway side is `WatermarkGuard` (built by `build_watermark` from `WatermarkSettings`);
the evidence lives in an `EvidenceStore`; `verify_ownership` (`verify.verify`) asks a
`Suspect` and returns the evidence bundle that `bundle.sign` signs.

Only the settings are imported eagerly: config.py imports them, and the rest of this
package imports the gateway, which imports config.py; the other names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .settings import WatermarkKeySettings, WatermarkSettings

if TYPE_CHECKING:
    from .guard import WatermarkGuard, build_watermark
    from .keyring import EvidenceCipher, Keyring, WatermarkKey
    from .marking import Mark, Watermarker
    from .oracle import WatermarkedOracle
    from .store import EvidenceRecord, EvidenceStore, evidence_store_from_url
    from .suspect import Suspect, suspect_from
    from .verify import Evidence, FingerprintPlan, gather, questions_from
    from .verify import verify as verify_ownership

_LAZY = {
    "WatermarkGuard": "guard", "build_watermark": "guard",
    "EvidenceCipher": "keyring", "Keyring": "keyring", "WatermarkKey": "keyring",
    "Mark": "marking", "Watermarker": "marking", "WatermarkedOracle": "oracle",
    "EvidenceRecord": "store", "EvidenceStore": "store", "evidence_store_from_url": "store",
    "Suspect": "suspect", "suspect_from": "suspect",
    "Evidence": "verify", "FingerprintPlan": "verify", "gather": "verify",
    "questions_from": "verify", "verify_ownership": "verify",
}
_RENAMED = {"verify_ownership": "verify"}

__all__ = [
    "Evidence",
    "EvidenceCipher",
    "EvidenceRecord",
    "EvidenceStore",
    "FingerprintPlan",
    "Keyring",
    "Mark",
    "Suspect",
    "WatermarkGuard",
    "WatermarkKey",
    "WatermarkKeySettings",
    "WatermarkSettings",
    "WatermarkedOracle",
    "Watermarker",
    "build_watermark",
    "evidence_store_from_url",
    "gather",
    "questions_from",
    "suspect_from",
    "verify_ownership",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))

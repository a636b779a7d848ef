"""Settings of the response watermark: `watermark:` in modelfence.yaml.

::

    watermark:
      fraction: 0.005            # share of answers marked for every caller
      fraction_at_risk: 0.05     # ... for callers whose risk (the monitor's score) >= at_risk
      at_risk: 0.5
      keys:                      # several secrets; `active` marks new answers, the others
        - {id: "2024", secret_file: wm-2024.secret}   # still verify old evidence
        - {id: "2025", secret_file: wm-2025.secret}
      active: "2025"             # default: the last key listed
      evidence_store: sqlite:///watermark-evidence.db
      evidence_key_file: evidence.key   # AES-256-GCM key; without it inputs are kept in clear

Secrets are read by `Keyring.from_settings` at start, never kept on the settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_KEY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"


class _Strict(BaseModel):
    """As config.py's settings (not imported from there: config.py imports this module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WatermarkKeySettings(_Strict):
    """One watermark secret: `id` is stored with every record it marked."""

    id: str = Field(pattern=_KEY_ID)
    secret_file: Path = Field(description="a file of at least 32 characters "
                              "(`modelfence watermark keygen`)")


class WatermarkSettings(_Strict):
    """The classifier response watermark and its evidence (DAWN, Szyller et al. 2021)."""

    models: list[str] = Field(default_factory=list,
                              description="models whose answers are marked; empty: every "
                              "classifier")
    fraction: float = Field(0.005, gt=0.0, le=0.5,
                            description="share of distinct inputs answered with a decoy")
    fraction_at_risk: float | None = Field(
        0.05, gt=0.0, le=0.5, description="the share for callers at or above `at_risk` "
        "(the monitor's score); null: always `fraction`")
    at_risk: float = Field(0.5, ge=0.0, le=1.0)
    control: bool = Field(True, description="also record as many unmarked inputs, whose "
                          "answers measure a suspect's accuracy on ordinary queries")
    keys: list[WatermarkKeySettings] = Field(min_length=1)
    active: str | None = Field(None, description="the key that marks new answers; default: "
                               "the last listed. The others only verify old evidence")
    evidence_store: str = Field("sqlite:///watermark-evidence.db",
                                description="sqlite:///PATH, postgresql://... or memory://")
    evidence_key_file: Path | None = Field(
        None, description="32-byte key (64 hex characters) that encrypts recorded inputs "
        "(AES-256-GCM); without it inputs are stored in clear")

    @model_validator(mode="after")
    def _keys_consistent(self) -> WatermarkSettings:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("watermark key ids must be unique (a retired key keeps its id)")
        if self.active is not None and self.active not in ids:
            raise ValueError(f"active key {self.active!r} is not among keys: {', '.join(ids)}")
        if self.fraction_at_risk is not None and self.fraction_at_risk < self.fraction:
            raise ValueError("fraction_at_risk must be at least fraction")
        return self

    @property
    def active_id(self) -> str:
        return self.active or self.keys[-1].id

    def fraction_for(self, risk: float) -> float:
        """The share of answers marked for a caller at `risk`."""
        if self.fraction_at_risk is not None and risk >= self.at_risk:
            return self.fraction_at_risk
        return self.fraction

    def marks(self, model: str) -> bool:
        return not self.models or model in self.models

    def resolved(self, base: Path) -> WatermarkSettings:
        """Relative paths (and sqlite:///relative URLs) taken from the config's folder."""
        def rel(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        update: dict[str, Any] = {
            "keys": [k.model_copy(update={"secret_file": rel(k.secret_file)}) for k in self.keys],
            "evidence_key_file": self.evidence_key_file and rel(self.evidence_key_file),
        }
        url = self.evidence_store
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            update["evidence_store"] = "sqlite:///" + str(rel(Path(url.removeprefix(
                "sqlite:///"))))
        return self.model_copy(update=update)

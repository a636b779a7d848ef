"""`monitor:` — the extraction monitor of classifiers, its alerts, and each model's summary."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, Strict
from .validators import redis_url


class ModelMonitor(Strict):
    """The extraction monitor for one model: its data summary (`modelfence monitor fit`)."""

    summary: ConfigPath
    detectors: list[str] | None = Field(
        None, description="detectors on for this model; default: the monitor's list")



class WebhookSettings(Strict):
    """Alerts are POSTed here as JSON, signed with HMAC-SHA256 when a secret file is given."""

    url: str = Field(pattern=r"^https?://")
    secret_file: ConfigPath | None = None
    timeout_s: float = Field(5.0, gt=0, le=60)


class MonitorSettings(Strict):
    """The extraction monitor. On for every model that names a `monitor.summary`.

    `shared` (redis://) makes every replica see every observation, in one order, and keeps
    snapshots there; without it the state lives in this process and is saved under
    `state_dir` on stop and every `snapshot_interval_s`.
    """

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="risk at which a caller's "
                             "episode starts: it is flagged and one alert raised")
    release: float | None = Field(
        None, ge=0.0, lt=1.0, description="an episode ends only when the risk is below this "
        "(default 0.6 x threshold) ...")
    min_dwell_s: float = Field(600.0, ge=0.0, description="... and at least this long after "
                               "it started ...")
    hold_s: float = Field(86_400.0, ge=0.0, description="... and this long after the sticky "
                          "detectors alone last reached the threshold (synthetic queries)")
    sticky: list[str] = Field(
        default_factory=lambda: ["ood", "prada", "synthetic", "naturalness", "flips"],
        description="detectors whose evidence is of synthetic queries; unknown names ignored")
    detectors: list[str] = Field(
        default_factory=lambda: ["prada", "boundary", "synthetic", "flips", "ood", "coverage",
                                 "volume"])
    max_principals: int = Field(10_000, ge=1, description="callers kept per model (LRU)")
    shared: str | None = Field(None, description="redis://HOST:PORT/DB shared by replicas")
    key_prefix: str = Field("modelfence:monitor:", pattern=r"^[A-Za-z0-9:_.\-]{1,64}$",
                            description="Redis keys start with this (one per deployment)")
    state_dir: ConfigPath | None = Field(None, description="snapshots without a shared store")
    snapshot_interval_s: float = Field(10.0, gt=0, le=3600)
    stream_max: int = Field(100_000, ge=1000, description="observations kept in the shared "
                            "stream between snapshots")
    queue_max: int = Field(10_000, ge=1, description="observations waiting; beyond it they "
                           "are taken on the request's own time")
    webhook: WebhookSettings | None = None

    @field_validator("shared")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        return redis_url(v, "monitor.shared")

    @model_validator(mode="after")
    def _release(self) -> MonitorSettings:
        if self.release is not None and self.release >= self.threshold:
            raise ValueError(f"monitor.release ({self.release}) must be below the threshold "
                             f"({self.threshold})")
        return self

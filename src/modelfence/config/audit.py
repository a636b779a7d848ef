"""`audit:` — where the tamper-evident audit log is written, and how it is sealed and pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .base import ConfigPath, StoreUrl, Strict


class AuditRetention(Strict):
    """`modelfence audit seal` / `prune`: archive old records in signed segments, then drop them."""

    archive_dir: ConfigPath = Field(Path("audit-archive"), description="where sealed segments "
                              "(compressed records and signed manifests) are written")
    segment_records: int = Field(100_000, ge=1, le=100_000_000,
                                 description="most records per sealed segment")


class AuditSettings(Strict):
    """The audit log. sqlite:/// and postgresql:// are hash-chained and verifiable.

    `durability: strict` answers a write after its batch committed (or, while the store is
    away, was fsync'd to `spill_dir`); `batched` queues it and may lose up to
    `queue_max + batch_max` records (about `flush_interval_ms` worth) on a crash.
    `checkpoint_key_file` is an Ed25519 private key (`modelfence audit keygen`); without it
    the newest records could be removed undetected.
    """

    sink: StoreUrl = Field("sqlite:///audit.db", description="sqlite:///PATH, postgresql://..., "
                      "log://, jsonl:///PATH or none://")
    durability: Literal["strict", "batched"] = "batched"
    batch_max: int = Field(512, ge=1, le=100_000, description="most records per commit")
    flush_interval_ms: float = Field(10.0, ge=0, le=10_000,
                                     description="batched: longest wait for a batch to fill")
    queue_max: int = Field(10_000, ge=1, le=10_000_000,
                           description="records waiting to be written; writers wait when full")
    checkpoint_every: int = Field(1000, ge=1, description="sign the head every N records")
    checkpoint_interval_s: float = Field(60.0, gt=0, le=86_400,
                                         description="and at least this often while writing")
    checkpoint_key_file: ConfigPath | None = None
    record_inputs: bool = False
    spill_dir: ConfigPath = Field(Path("audit-spill"), description="where batches the store cannot "
                            "take wait, on local disk, to be replayed in order")
    spill_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="spill size at which "
                                 "calls are refused (503) until the store answers again")
    disabled_acknowledged: bool = Field(False, description="run with sink none:// (no audit "
                                        "trail at all)")
    retention: AuditRetention = AuditRetention()

    @model_validator(mode="after")
    def _none_is_acknowledged(self) -> AuditSettings:
        if self.sink in ("none://", "none") and not self.disabled_acknowledged:
            raise ValueError("sink none:// records no call at all; set "
                             "audit.disabled_acknowledged: true to run without an audit trail")
        return self

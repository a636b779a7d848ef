"""Where audit records go, chosen by URL.

The default is a tamper-evident chained store (writer.py): `sqlite:///audit.db` or
`postgresql://...`. `log://`, `jsonl:///path` and `none://` are plain, unchained sinks
for development and for shipping records elsewhere; `audit verify` cannot check them.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..stores.registry import Scheme, StoreKind, file_scheme, plain, postgresql

if TYPE_CHECKING:
    from ..config import AuditSettings
    from .record import AuditRecord
    from .spill import SpillMetrics
    from .store import AuditStore

CHAINED_SCHEMES = ("sqlite", "postgresql", "postgres")


class AuditSink(ABC):
    """`open()` before the first write (it may start a background writer), `close()` last."""

    #: True for none://: nothing is recorded (started only with an acknowledgement)
    disabled: bool = False

    @property
    def accepting(self) -> bool:
        """False when a record written now could not be kept: the gateway refuses calls."""
        return True

    async def ready(self) -> bool:
        return self.accepting

    async def open(self) -> None:
        return None

    @abstractmethod
    async def write(self, record: AuditRecord) -> None: ...

    async def close(self) -> None:
        return None


class NullSink(AuditSink):
    """none://: no audit trail. The config must acknowledge it; every start says so loudly."""

    disabled = True

    async def open(self) -> None:
        logging.getLogger("modelfence.audit").warning(
            "AUDIT TRAIL DISABLED: audit.sink is none:// (audit.disabled_acknowledged is set); "
            "no call, denial or admin action is recorded")

    async def write(self, record: AuditRecord) -> None:
        return None


class LogSink(AuditSink):
    """One JSON line per call on the `modelfence.audit` logger."""

    def __init__(self) -> None:
        self._log = logging.getLogger("modelfence.audit")

    async def write(self, record: AuditRecord) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s", orjson.dumps(record).decode())


class JsonlSink(AuditSink):
    """Appends one JSON object per line; each line is flushed so a crash loses at most one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def _handle(self) -> IO[bytes]:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("ab", buffering=0)
        return self._file

    async def write(self, record: AuditRecord) -> None:
        self._handle().write(orjson.dumps(record) + b"\n")

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def audit_store_of(sink: AuditSink) -> AuditStore | None:
    """The queryable store behind a hash-chained sink (alerts, download history), else None."""
    from .store import AuditStore

    store = getattr(sink, "store", None)
    return store if isinstance(store, AuditStore) else None


def audit_sink_from_url(url: str, settings: AuditSettings | None = None,
                        spill_metrics: SpillMetrics | None = None) -> AuditSink:
    """Build (not open) the sink `url` names; `settings` tunes a chained store and its spill.

    The checkpoint key is read here, at start-up, so a missing or wrong key refuses to
    start with one line naming the file (and never its content).
    """
    return AUDIT_SINKS.open(url, settings=settings, spill_metrics=spill_metrics)


def _chained(url: str, *, settings: AuditSettings | None = None,
             spill_metrics: SpillMetrics | None = None) -> AuditSink:
    from ..config import AuditSettings
    from .checkpoint import CheckpointPolicy, load_signer
    from .spill import Spill
    from .store import audit_store_from_url
    from .writer import ChainedSink

    s = settings or AuditSettings(sink=url)
    key_file = s.checkpoint_key_file
    return ChainedSink(
        audit_store_from_url(url, durability=s.durability), durability=s.durability,
        batch_max=s.batch_max, flush_interval_ms=s.flush_interval_ms,
        queue_max=s.queue_max, signer=load_signer(key_file) if key_file else None,
        policy=CheckpointPolicy(s.checkpoint_every, s.checkpoint_interval_s),
        spill=Spill(s.spill_dir, s.spill_max_bytes, spill_metrics))


def _jsonl(path: Path, **_options: Any) -> AuditSink:
    return JsonlSink(path)


#: Where audit records go: a hash-chained store (sqlite, postgresql), or unchained sinks.
AUDIT_SINKS: StoreKind[AuditSink] = StoreKind(
    "audit.sink", Scheme(("sqlite",), "sqlite:///PATH", _chained), postgresql(_chained),
    plain("log", LogSink, bare=True), file_scheme("jsonl", _jsonl),
    plain("none", NullSink, bare=True), noun="sink")

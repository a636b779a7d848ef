"""Where audit records go, chosen by URL: log://, jsonl:///path, none://."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, TYPE_CHECKING

import orjson

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .record import AuditRecord


class AuditSink(ABC):
    @abstractmethod
    async def write(self, record: AuditRecord) -> None: ...

    async def close(self) -> None:
        return None


class NullSink(AuditSink):
    async def write(self, record: AuditRecord) -> None:
        return None


class LogSink(AuditSink):
    """One JSON line per call on the `modelfence.audit` logger."""

    def __init__(self) -> None:
        self._log = logging.getLogger("modelfence.audit")

    async def write(self, record: AuditRecord) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s", orjson.dumps(record.to_dict()).decode())


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
        self._handle().write(orjson.dumps(record.to_dict()) + b"\n")

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def audit_sink_from_url(url: str) -> AuditSink:
    if url in ("none://", "none"):
        return NullSink()
    if url in ("log://", "log"):
        return LogSink()
    if url.startswith("jsonl:///"):
        path = url.removeprefix("jsonl:///")
        if path:
            return JsonlSink(Path(path))
    raise ConfigurationError(
        f"audit.sink: unknown sink {url!r}; use log://, jsonl:///PATH or none://")

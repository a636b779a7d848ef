"""The dead letter: audit records the store refused for good, kept aside on local disk.

A record the store can never take (a value it cannot hold) must not stop the records
after it, so the writer commits around it and appends it here: one JSON object per line,
in a 0600 file under the spill folder, with the store's reason. The file is bounded:
past `max_bytes` a refused record is only counted and logged, so a flood of them cannot
fill the disk. Every record set aside is counted (`modelfence_audit_dead_letter_records`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from .chain import Entry

NAME = "audit-dead-letter.jsonl"


class DeadLetter:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def add(self, entries: list[Entry], reason: str) -> bool:
        """Append `entries` (fsync'd); False when the bound or the disk refused them."""
        now = time.time()
        data = b"".join(orjson.dumps({
            "dead_lettered_at": now, "reason": reason, "ts_us": e.ts_us,
            "request_id": e.request_id, "principal": e.principal, "tenant": e.tenant,
            "model": e.model, "action": e.action, "status": e.status,
            "record": e.payload.decode("utf-8", "replace")}) + b"\n" for e in entries)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                return False
            os.write(fd, data)
            os.fsync(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

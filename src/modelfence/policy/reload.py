"""Reloading policies while serving: the admin API's reload and what a worker restart needs."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .engine import PolicyEngine
from .snapshot import save, snapshot_path

log = logging.getLogger("modelfence.policy")


@dataclass
class PolicyReloader:
    """Reloads this worker's engine; with several workers, asks granian to respawn the rest.

    granian's SIGHUP respawns every worker; each loads the (now valid) files on start.
    """

    engine: PolicyEngine
    state_dir: Path | None
    workers: int

    def reload(self) -> None:
        bundle = self.engine.load()  # raises ConfigurationError and keeps the current set
        try:
            save(bundle, snapshot_path(self.engine, self.state_dir))
        except OSError as err:
            log.warning("cannot keep the last good policy set: %s", err.strerror)
        if self.workers > 1:
            os.kill(os.getppid(), signal.SIGHUP)

    def describe(self) -> dict[str, Any]:
        bundle = self.engine.bundle
        return {
            "loaded_at": datetime.fromtimestamp(bundle.loaded_at, UTC).isoformat(),
            "policies": [{"id": s.label, "file": s.file, "line": s.line}
                         for s in bundle.statements],
        }

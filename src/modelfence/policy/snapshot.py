"""The last good policy set, kept on disk for worker restarts.

On SIGHUP granian respawns its workers; each new worker reads the policy files again.
If an edit broke them, the worker logs why and serves the last good set from here
instead of refusing to start — the rule "a bad reload keeps the last good set".
A fresh `modelfence serve` never falls back: it refuses to start on a bad file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import orjson

from ..errors import ConfigurationError
from .engine import PolicyBundle, PolicyEngine, bundle_from_statements
from .sources import Statement

log = logging.getLogger("modelfence.policy")


def snapshot_path(engine: PolicyEngine, state_dir: Path | None) -> Path:
    if state_dir is None:
        key = "\0".join(str(p) for p in [*engine.paths, engine.schema_path])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        state_dir = Path(tempfile.gettempdir()) / f"modelfence-{digest}"
    return state_dir / "policies.last-good.json"


def save(bundle: PolicyBundle, path: Path) -> None:
    doc = {"loaded_at": bundle.loaded_at,
           "statements": [{"text": s.text, "file": s.file, "line": s.line}
                          for s in bundle.statements]}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(doc))
    tmp.replace(path)


def load(path: Path, engine: PolicyEngine) -> PolicyBundle:
    doc = orjson.loads(path.read_bytes())
    statements = [Statement(s["text"], s["file"], s["line"]) for s in doc["statements"]]
    return bundle_from_statements(statements, engine.schema_path, loaded_at=doc["loaded_at"])


def load_policies(engine: PolicyEngine, state_dir: Path | None, *, fallback: bool) -> None:
    """Load the files; with `fallback`, a bad file means the last good set, not a dead worker."""
    path = snapshot_path(engine, state_dir)
    try:
        bundle = engine.load()
    except ConfigurationError as exc:
        if not fallback or not path.exists():
            raise
        try:
            engine.use(load(path, engine))
        except (OSError, ValueError, KeyError, ConfigurationError):
            raise exc from None
        log.error("policy files are invalid, serving the last good set instead: %s", exc)
        return
    try:
        save(bundle, path)
    except OSError as err:
        log.warning("cannot keep the last good policy set in %s: %s", path, err.strerror)

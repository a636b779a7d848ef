"""The demo: a small digits classifier behind the gateway, made on first run, reused after.

Everything lives in one folder (``~/.modelfence/demo`` or ``$MODELFENCE_HOME/demo``):
the model in skops format, a server secret (mode 0600), modelfence.yaml, the key
store, the hash-chained audit log and the key that signs its checkpoints. Each run
mints a fresh demo key and revokes the previous one, so keys stay shown-once and stored
only as digests. What the gateway learns while serving (callers' risk, the audit log,
the keys) survives restarts, as it would in production; `reset` forgets it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from .audit.checkpoint import generate_keypair
from .config import load_settings
from .extras import require, skops_io
from .identity.apikeys import ApiKeys
from .monitor.summary import Summary
from .shaping.recommended import RECOMMENDED_MONITOR, recommended_shaping
from .stores import key_store_from_url

MODEL_NAME = "digits"
SUMMARY = "digits.summary.npz"
DEMO_PRINCIPAL = "demo"
DEMO_TENANT = "demo"
DEMO_KEY_NOTE = "modelfence demo key"


@dataclass(frozen=True)
class DemoFiles:
    home: Path
    config: Path
    model: Path
    sample_request: Path
    trained_now: bool
    accuracy: float | None


def require_extra() -> None:
    """The demo trains and serves a scikit-learn model: without the `local` extra, say so
    before anything is made (ConfigurationError naming the extra)."""
    require("local", "the demo (a scikit-learn model)", "sklearn", "skops")


def prepare(home: Path) -> DemoFiles:
    """Create what is missing in `home`; keep what is there."""
    require_extra()
    home.mkdir(parents=True, exist_ok=True)
    model = home / "digits.skops"
    sample = home / "sample-request.json"
    accuracy = None
    trained = not model.exists()
    if trained:
        accuracy = _train(model, sample)
    _ensure_summary(model, home / SUMMARY)
    _write_secret(home / "secret")
    if not (home / "audit-checkpoint.pem").exists():
        generate_keypair(home / "audit-checkpoint.pem", home / "audit-checkpoint.pub.pem")
    config = home / "modelfence.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(_config(), sort_keys=False))
    return DemoFiles(home, config, model, sample, trained, accuracy)


#: What serving the demo writes (its memory of callers), as opposed to what `prepare` makes.
STATE = ("monitor-state", "audit.db", "keys.db")
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def reset(home: Path) -> list[str]:
    """Forget what earlier runs learned: callers' risk and monitor history, the audit log
    and its alerts, the key store; rewrite the config as a first run writes it. The trained
    model, its summary, the secret and the checkpoint key stay (nothing to retrain).

    Returns the names removed or rewritten, for the user to read.
    """
    done: list[str] = []
    for name in STATE:
        for path in (home / name, *(home / f"{name}{s}" for s in _SQLITE_SIDECARS)):
            if path.is_dir():
                shutil.rmtree(path)
                done.append(f"{path.name}/")
            elif path.exists():
                path.unlink()
                done.append(path.name)
    config = home / "modelfence.yaml"
    if config.exists():
        config.unlink()
        done.append(config.name)
    return done


@dataclass(frozen=True)
class RememberedRisk:
    """The demo caller's risk as the gateway restores it at start, and the band it selects."""

    risk: float
    band: str
    defense: str
    degraded: bool  # answers are shaped beyond the lowest band


def remembered_risk(config: Path) -> RememberedRisk | None:
    """Read the monitor's snapshot as the gateway will; None when there is nothing to tell."""
    from .monitor.score import Monitor
    from .monitor.score import MonitorSettings as MonitorOptions

    settings = load_settings(config)
    model = settings.model(MODEL_NAME)
    state_dir = settings.monitor.state_dir
    if model is None or model.monitor is None or not model.shaping or state_dir is None:
        return None
    path = state_dir / f"{MODEL_NAME}.monitor-state"  # LocalLog's file for the model
    if not path.is_file():
        return None
    ms = settings.monitor
    monitor = Monitor(Summary.load(model.monitor.summary), MonitorOptions(
        detectors=tuple(model.monitor.detectors or ms.detectors), threshold=ms.threshold,
        max_principals=ms.max_principals, release=ms.release, min_dwell_s=ms.min_dwell_s,
        hold_s=ms.hold_s, sticky=tuple(ms.sticky)))
    monitor.restore(path.read_bytes())
    risk = max(monitor.peek(DEMO_PRINCIPAL), monitor.peek_tenant(DEMO_TENANT))
    bands = [b for b in model.shaping if risk >= b.from_risk]
    if not bands:
        return None
    band = bands[-1]
    return RememberedRisk(risk, band.name or band.defense, band.defense,
                          degraded=band is not model.shaping[0])


def _train(model_path: Path, sample_path: Path) -> float:
    sio = skops_io()
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = _digits_split()
    clf = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=400, random_state=0))
    clf.fit(x_train, y_train)
    tmp = model_path.with_suffix(".tmp")
    sio.dump(clf, tmp)
    tmp.replace(model_path)
    request = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                           "data": [float(v) for v in x_test[0]]}]}
    sample_path.write_bytes(orjson.dumps(request))
    return float(clf.score(x_test, y_test))


def _digits_split() -> tuple[Any, Any, Any, Any]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=0, stratify=y))


def _ensure_summary(model_path: Path, path: Path) -> None:
    """The monitor's yardstick (`monitor fit`): the held-out rows, the model's own answers.

    Refitted when missing or written by an older modelfence (a format it no longer reads).
    """
    from .errors import ConfigurationError

    if path.exists():
        try:
            Summary.load(path)
            return
        except ConfigurationError:
            pass
    sio = skops_io()

    clf = sio.load(model_path)  # the default trust, as the gateway loads it
    x_test = _digits_split()[1]
    Summary.fit(x_test, clf.predict_proba(x_test), predict=clf.predict_proba).save(path)


def _write_secret(path: Path) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))


def _config() -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1", "port": 8000},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "sqlite:///audit.db", "checkpoint_key_file": "audit-checkpoint.pem"},
        "models": [{
            "name": MODEL_NAME,
            "backend": {"type": "skops", "path": "digits.skops"},
            "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]},
            "limits": {"max_batch": 256},
            "monitor": {"summary": SUMMARY},
            # the recommended graduated response (shaping/recommended.py), the one measured
            "shaping": recommended_shaping(),
            "reveal_band": False,  # answers do not name the band; the audit record does
        }],
        "monitor": {"state_dir": "monitor-state",
                    **{k: list(v) if isinstance(v, tuple) else v
                       for k, v in RECOMMENDED_MONITOR.items()}},
    }


async def mint_demo_key(config: Path) -> str:
    """A fresh key for the demo principal; earlier demo keys are revoked."""
    settings = load_settings(config)
    keys = ApiKeys(key_store_from_url(settings.stores.keys), settings.server_secret())
    await keys.store.open()
    try:
        for record in await keys.records():
            if record.description == DEMO_KEY_NOTE and record.revoked_at is None:
                await keys.revoke(record.key_id)
        new = await keys.create(principal=DEMO_PRINCIPAL, tenant=DEMO_TENANT, models=[MODEL_NAME],
                                description=DEMO_KEY_NOTE)
        return new.token
    finally:
        await keys.store.close()

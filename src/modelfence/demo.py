"""The demo: a small digits classifier behind the gateway, made on first run, reused after.

Everything lives in one folder (``~/.modelfence/demo`` or ``$MODELFENCE_HOME/demo``):
the model in skops format, a server secret (mode 0600), modelfence.yaml, the key
store, the hash-chained audit log and the key that signs its checkpoints. Each run
mints a fresh demo key and revokes the previous one, so keys stay shown-once and stored
only as digests.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from .audit.checkpoint import generate_keypair
from .config import load_settings
from .identity.apikeys import ApiKeys
from .monitor.summary import Summary
from .shaping.recommended import RECOMMENDED_MONITOR, recommended_shaping
from .stores import key_store_from_url

MODEL_NAME = "digits"
SUMMARY = "digits.summary.npz"
DEMO_PRINCIPAL = "demo"
DEMO_KEY_NOTE = "modelfence demo key"


@dataclass(frozen=True)
class DemoFiles:
    home: Path
    config: Path
    model: Path
    sample_request: Path
    trained_now: bool
    accuracy: float | None


def prepare(home: Path) -> DemoFiles:
    """Create what is missing in `home`; keep what is there."""
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


def _train(model_path: Path, sample_path: Path) -> float:
    import skops.io as sio
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
    import skops.io as sio

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
        new = await keys.create(principal=DEMO_PRINCIPAL, tenant="demo", models=[MODEL_NAME],
                                description=DEMO_KEY_NOTE)
        return new.token
    finally:
        await keys.store.close()

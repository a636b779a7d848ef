"""What an example configuration needs around it, made in a folder of its own.

The configurations in examples/ are written for a real deployment: secrets under
/run/secrets, a PostgreSQL role, model files, an upstream model server. `prepare` copies one
into a workspace and makes each of those for it, changing only what must change to run on
this machine: absolute secret paths become files in the workspace, upstream addresses point
at loopback stand-ins (`stand_ins`), and the database role the URLs name is created (or its
password set) through an administrator's connection. Everything else runs as written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigurationError
from ..extras import require, skops_io
from .stand_ins import OipModel, StandIn, oip_stand_in, openai_stand_in

PG_PASSWORD_ENV = "MODELFENCE_PG_PASSWORD"  # noqa: S105 (a variable name, not a secret)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class World:
    """A prepared example: its config, what was made, the stand-ins to start, env to set."""

    name: str
    folder: Path
    config: Path
    made: list[str] = field(default_factory=list)
    stand_ins: list[StandIn] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # OIP models, then LLM models
    request: tuple[str, Path] | None = None  # (path on the gateway, JSON body file)


def prepare(source: Path, folder: Path, *, postgres_admin: str | None) -> World:
    """Copy `source` into `folder` with everything it needs made (kept across runs)."""
    doc = yaml.safe_load(source.read_text())
    if not isinstance(doc, dict):
        raise ConfigurationError(f"{source}: not a configuration mapping")
    folder.mkdir(parents=True, exist_ok=True)
    world = World(source.stem, folder, folder / source.name)
    world.env = _environment(source, folder, world)
    _files(doc, source.parent, world)
    _upstreams(doc, world)
    world.config.write_text(f"# {source} as `modelfence example` runs it\n"
                            + yaml.safe_dump(doc, sort_keys=False))
    if "postgresql://" in source.read_text():
        _postgres(_expanded_urls(doc, world.env), postgres_admin, world)
    world.request = _sample_request(doc, folder)
    return world


# environment --------------------------------------------------------------------------------

def _environment(source: Path, folder: Path, world: World) -> dict[str, str]:
    """Values for the `${NAME}`s the config uses: the database password is made here."""
    env: dict[str, str] = {}
    for name in sorted(set(_ENV_REF.findall(source.read_text()))):
        if name in os.environ:
            env[name] = os.environ[name]
        elif name == PG_PASSWORD_ENV:
            env[name] = _secret_file(folder / "pg-password", world, 24)
        else:
            raise ConfigurationError(f"{source} uses ${{{name}}}: set that environment "
                                     "variable, then run the example again")
    return env


def _secret_file(path: Path, world: World, nbytes: int) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
        world.made.append(f"{path.name} (random, mode 0600)")
    return path.read_text().strip()


# files ----------------------------------------------------------------------------------------

def _local(path: str) -> str:
    """An absolute path of the deployment (/run/secrets/x) becomes the workspace's x."""
    return Path(path).name if Path(path).is_absolute() else path


def _files(doc: dict[str, Any], origin: Path, world: World) -> None:
    here = world.folder
    if isinstance(doc.get("secret_file"), str):
        doc["secret_file"] = _local(doc["secret_file"])
        _secret_file(here / doc["secret_file"], world, 48)
    admin = doc.get("admin") or {}
    if isinstance(admin.get("token_file"), str):
        admin["token_file"] = _local(admin["token_file"])
        _secret_file(here / admin["token_file"], world, 32)
    audit = doc.get("audit") or {}
    if isinstance(audit.get("checkpoint_key_file"), str):
        audit["checkpoint_key_file"] = _local(audit["checkpoint_key_file"])
        key = here / audit["checkpoint_key_file"]
        if not key.exists():
            from ..audit.checkpoint import generate_keypair

            generate_keypair(key, key.with_name(key.stem + ".pub.pem"))
            world.made.append(f"{key.name} (audit checkpoint signing key)")
    for policy in (doc.get("policy") or {}).get("files") or []:
        target = here / policy
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin / policy, target)
    for llm in (doc.get("llm") or {}).get("models") or []:
        if isinstance(llm.get("api_key_file"), str):
            llm["api_key_file"] = _local(llm["api_key_file"])
            _secret_file(here / llm["api_key_file"], world, 24)
    for model in doc.get("models") or []:
        backend = model.get("backend") or {}
        if backend.get("type") in ("skops", "onnx") and isinstance(backend.get("path"), str):
            backend["path"] = _local(backend["path"])
            path = here / backend["path"]
            if not path.exists():
                features, classes = _shape(model)
                _train(path, backend["type"], features, classes)
                data = ("scikit-learn's digits" if (features, classes) == (DIGITS, 10) else
                        f"{features} synthetic features")
                world.made.append(f"{backend['path']} (a {classes}-class model on {data})")


DIGITS = 64  # an input this wide without labels is taken for scikit-learn's 8x8 digits


def _shape(model: dict[str, Any]) -> tuple[int, int]:
    """Input width and classes from the model's `input` and `labels`."""
    shape = (model.get("input") or {}).get("shape") or [-1, 10]
    features = int(shape[-1])
    labels = model.get("labels") or []
    return features, len(labels) or (10 if features == DIGITS else 2)


def _train(path: Path, kind: str, features: int, classes: int) -> None:
    try:
        from sklearn.datasets import load_digits, make_classification
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigurationError(f"making {path.name} needs scikit-learn: pip install "
                                 "'modelfence[examples]' (or put your own model there)"
                                 ) from None

    if (features, classes) == (DIGITS, 10):
        x, y = load_digits(return_X_y=True)
    else:
        x, y = make_classification(n_samples=1000, n_features=features, random_state=0,
                                   n_informative=min(features, 8), n_classes=classes)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "skops":
        skops_io().dump(clf, path)
        return
    try:
        from skl2onnx import to_onnx
    except ImportError:
        raise ConfigurationError(f"making {path.name} needs skl2onnx: pip install "
                                 "'modelfence[examples]' (or put your own ONNX model there)"
                                 ) from None
    onx = to_onnx(clf, x[:1].astype("float32"), options={"zipmap": False}, target_opset=17)
    path.write_bytes(onx.SerializeToString())


# upstreams ------------------------------------------------------------------------------------

def _upstreams(doc: dict[str, Any], world: World) -> None:
    oip: list[tuple[dict[str, Any], OipModel]] = []
    for model in doc.get("models") or []:
        world.models.append(model["name"])
        backend = model.get("backend") or {}
        if backend.get("type") == "oip":
            features, classes = _shape(model)
            oip.append((backend, OipModel(backend.get("upstream_model") or model["name"],
                                          features, classes,
                                          backend.get("probabilities_output") or
                                          "predict_proba")))
    if oip:
        server = oip_stand_in([m for _, m in oip])
        world.stand_ins.append(server)
        for backend, _ in oip:
            world.made.append(f"{backend['url']} → stand-in at {server.base}")
            backend["url"] = server.base
    for llm in (doc.get("llm") or {}).get("models") or []:
        world.models.append(llm["name"])
        upstream = str(llm.get("upstream", ""))
        if not upstream.startswith(("http://", "https://")):
            continue
        key = llm.get("api_key_file")
        server = openai_stand_in(
            (world.folder / key).read_text().strip() if isinstance(key, str) else None)
        world.stand_ins.append(server)
        world.made.append(f"{upstream} → stand-in at {server.base}/v1")
        llm["upstream"] = f"{server.base}/v1"


# PostgreSQL -----------------------------------------------------------------------------------

def _expanded_urls(doc: Any, env: dict[str, str]) -> set[str]:
    if isinstance(doc, dict):
        return set().union(*(_expanded_urls(v, env) for v in doc.values()))
    if isinstance(doc, list):
        return set().union(*(_expanded_urls(v, env) for v in doc))
    if isinstance(doc, str) and doc.startswith("postgresql://"):
        return {_ENV_REF.sub(lambda m: env[m.group(1)], doc)}
    return set()


def _postgres(urls: set[str], admin_url: str | None, world: World) -> None:
    """Create the role and database each URL names (or set the role's password)."""
    require("examples", "an example with PostgreSQL stores", "psycopg", "psycopg_pool")
    import psycopg
    from psycopg import sql

    for url in sorted(urls):
        u = urlsplit(url)
        user, password, database = u.username, u.password, u.path.lstrip("/")
        if not user or not database:
            continue
        admin = admin_url or f"postgresql://postgres@{u.hostname}:{u.port or 5432}/postgres"
        where = f"PostgreSQL at {u.hostname}:{u.port or 5432}"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                role = sql.Identifier(user)
                secret = sql.Literal(password or "")
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                (user,)).fetchone() is None:
                    # another example may make it meanwhile; its password is set below
                    with contextlib.suppress(psycopg.errors.DuplicateObject):
                        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                            role, secret))
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, secret))
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (database,)).fetchone() is None:
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(database), role))
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"{where}: cannot create role {user!r} and database {database!r} as "
                f"{urlsplit(admin).username or 'the administrator'} "
                f"({exc.__class__.__name__}); start PostgreSQL or pass --postgres-admin URL "
                "of a role that may create roles") from None
        world.made.append(f"{where}: role {user!r} (password in ${PG_PASSWORD_ENV}), "
                          f"database {database!r}")


# a first request ------------------------------------------------------------------------------

def _sample_request(doc: dict[str, Any], folder: Path) -> tuple[str, Path] | None:
    path = folder / "request.json"
    for model in doc.get("models") or []:
        features, _ = _shape(model)
        name = (model.get("input") or {}).get("name", "input")
        path.write_text(json.dumps({"inputs": [{
            "name": name, "shape": [1, features], "datatype": "FP32",
            "data": [round(0.1 * (i % 10), 1) for i in range(features)]}]}))
        return f"/v2/models/{model['name']}/infer", path
    for llm in (doc.get("llm") or {}).get("models") or []:
        path.write_text(json.dumps({"model": llm["name"], "messages": [
            {"role": "user", "content": "Hello! What can you do for me?"}]}))
        return "/v1/chat/completions", path
    return None

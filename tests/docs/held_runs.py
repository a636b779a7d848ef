"""The held checks that start something: an OIP stand-in, a deploy/ copy, a
local replica. Kept apart from tests/docs/held.py, which names every held snippet's check."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..support import free_port, interrupt, wait_http
from .snippets import ROOT, Snippet, map_ports

if TYPE_CHECKING:
    from .held import Context

DEPLOY = ROOT / "deploy"


def _run(code: str, cwd: Path, env: dict[str, str], what: str) -> str:
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout[-2000:]}"\
        f"\n{result.stderr[-2000:]}"
    return result.stdout


def curl_churn(line: str) -> dict[str, Any]:
    """The page's curl of the forwarded predictor, against an OIP stand-in serving churn."""
    import json

    from modelfence.cli.stand_ins import OipModel, oip_stand_in

    server = oip_stand_in([OipModel("churn", 12, 2)]).start()
    out = _run(map_ports(line, {8080: server.port}), ROOT, dict(os.environ), line)
    doc: dict[str, Any] = json.loads(out)
    return doc


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def deploy_secrets(snip: Snippet, ctx: Context) -> None:
    """The secrets snippet, run in a copy of deploy/ with `sudo` as this user."""
    from cryptography.hazmat.primitives import serialization

    work = ctx.tmp_path / "deploy-secrets"
    shutil.copytree(DEPLOY, work / "deploy", ignore=shutil.ignore_patterns("secrets", ".env"))
    shim = work / "bin"
    shim.mkdir()
    (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    _run(snip.code, work, env, snip.where)
    deploy = work / "deploy"
    compose = _compose()
    mounted = {Path(s["file"]).name for s in compose["secrets"].values()}
    assert {p.name for p in (deploy / "secrets").iterdir()} == mounted
    for name in mounted:
        st = (deploy / "secrets" / name).stat()
        assert (st.st_mode & 0o777, st.st_gid) == (0o640, 10001), (name, oct(st.st_mode))
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    made = dict(line.split("=", 1) for line in (deploy / ".env").read_text().splitlines())
    assert required == set(made) and all(re.fullmatch(r"[0-9a-f]{48}", v) for v in made.values())
    config = (DEPLOY / "modelfence.yaml").read_text()
    assert set(re.findall(r"/run/secrets/([\w.-]+)", config)) == mounted
    private = serialization.load_pem_private_key(
        (deploy / "secrets" / "audit-checkpoint.pem").read_bytes(), None)
    public = serialization.load_pem_public_key((deploy / "audit-checkpoint.pub.pem").read_bytes())
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert private.public_key().public_bytes(*raw) == public.public_bytes(*raw)


def compose_up(snip: Snippet) -> None:
    """What `docker compose up -d --build` and `ps` rely on, read from deploy/."""
    assert [ln.split(" #")[0].strip() for ln in snip.code.splitlines() if ln.strip()] == [
        "docker compose up -d --build", "docker compose ps"]
    compose = _compose()
    build = compose["x-image"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    assert context == ROOT and dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (context / source).exists(), line
    assert "HEALTHCHECK" in dockerfile.read_text()  # the replicas' health, as `ps` shows it
    services = compose["services"]
    for name in ("gateway-1", "gateway-2", "lb"):
        assert name in services, name
    for name in ("postgres", "redis", "lb"):
        assert "test" in services[name]["healthcheck"], name
    for name in ("gateway-1", "gateway-2"):
        assert services[name]["image"] == "modelfence:local" and "build" in services[name]


def _replica(ctx: Context) -> dict[str, Any]:
    """One replica as a local process: its model made by deploy/demo_model.py as compose's
    demo-model step makes it, the deploy config's admin token file (step 1's), its own SQLite
    stores instead of PostgreSQL; started once for the page's snippets."""
    if "replica" in ctx.cache:
        replica: dict[str, Any] = ctx.cache["replica"]
        return replica
    deploy_config = yaml.safe_load((DEPLOY / "modelfence.yaml").read_text())
    assert deploy_config["admin"]["token_file"] == "/run/secrets/admin-token"
    assert deploy_config["server"]["admin_listen"].endswith(":9090")
    model = deploy_config["models"][0]
    assert model["name"] == "digits" and model["backend"]["path"] == "/models/digits.skops"
    assert "MODELFENCE_CONFIG=/etc/modelfence/modelfence.yaml" in (
        DEPLOY / "Dockerfile").read_text()
    compose = _compose()
    assert "./modelfence.yaml:/etc/modelfence/modelfence.yaml:ro" in compose["x-gateway"][
        "volumes"]
    assert compose["services"]["demo-model"]["command"] == ["/models/digits.skops"]
    folder = ctx.tmp_path / "replica"
    models = folder / "models"  # the `models` volume
    python = str(ROOT / ".venv/bin/python")
    subprocess.run([python, str(DEPLOY / "demo_model.py"), str(models / "digits.skops")],
                   check=True, capture_output=True, timeout=120)
    (folder / "deploy" / "secrets").mkdir(parents=True)
    (folder / "deploy" / "secrets" / "admin-token").write_text(secrets.token_hex(32) + "\n")
    (folder / "secret").write_text(secrets.token_urlsafe(48) + "\n")
    port, admin = free_port(), free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port, "admin_listen": f"127.0.0.1:{admin}"},
        "secret_file": "secret",
        "admin": {"token_file": str(folder / "deploy" / "secrets" / "admin-token")},
        "stores": {"keys": "sqlite:///keys.db"}, "audit": {"sink": "sqlite:///audit.db"},
        "models": [{**model, "backend": {**model["backend"],
                                         "path": str(models / "digits.skops")}}]}))
    env = {**os.environ, "MODELFENCE_CONFIG": str(config)}
    log = folder / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROOT / ".venv/bin/modelfence"), "serve"], cwd=folder,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    ctx.stack.callback(interrupt, proc, 15)
    # as long as the docs tests give a demo: a start takes minutes at a load average of 15+
    wait_http(f"http://127.0.0.1:{admin}/admin/ready", timeout_s=120, proc=proc, log=log)
    made = _run(f"{ROOT / '.venv/bin/modelfence'} keys create --principal alice --tenant acme "
                "--model digits --json", folder, env, "keys create")
    replica = {"env": env, "ports": {8000: port, 9090: admin}, "models": models,
               "cwd": folder / "deploy", "key": yaml.safe_load(made)["key"]}
    ctx.cache["replica"] = replica
    return replica


def replica_commands(snip: Snippet, ctx: Context) -> None:
    """A replica's snippet, run against the local replica: `docker compose exec gateway-1`
    becomes the command itself (its MODELFENCE_CONFIG names the replica's config),
    `docker compose cp gateway-1:/models/X .` a copy of X from the replica's models folder."""
    replica = _replica(ctx)
    code = map_ports(snip.code, replica["ports"])
    code = code.replace("docker compose exec gateway-1 modelfence",
                        str(ROOT / ".venv/bin/modelfence"))
    code = re.sub(r"docker compose cp gateway-1:/models/(\S+) \.",
                  lambda m: f"cp {replica['models'] / m.group(1)} .", code)
    code = code.replace("mf_…", replica["key"])
    assert "docker" not in code, code
    out = _run(code, replica["cwd"], replica["env"], snip.where)
    if "/admin/keys" in code:
        assert '"key":"mf_' in out.replace(" ", ""), out
    if "/infer" in code:
        assert '"probabilities"' in out, out
    if "keys list" in code:
        assert "alice" in out, out
    if "audit verify" in code:
        assert "alice" in out, out


def digits_model(path: Path) -> Path:
    """A scikit-learn classifier of the digits (pixels scaled to [0, 1]) saved as skops."""
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(LogisticRegression(max_iter=500).fit(x / 16.0, y), path)
    return path


def _admin_call(url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 (the check's loopback gateway)
        url, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def admin_fragment_served(part: dict[str, Any], ctx: Context) -> None:
    """Identity's `admin` section served: laid over a gateway whose `identity.jwt` names a
    groups claim (a local identity provider), with the token files it names and a model
    called fraud-scorer (the digits classifier); the full-power token, the scoped
    scoring-team token and an OIDC admin of `modelfence-admins` each call the admin API."""
    from ..jwks_server import AUDIENCE, ISSUER, Issuer, JwksServer
    from ..support import Gateway

    folder = ctx.tmp_path / "admin-fragment"
    model = digits_model(folder / "digits.skops")
    idp = Issuer()
    idp.add("ec", "ec-1")
    jwks = ctx.stack.enter_context(JwksServer(idp))
    gateway = Gateway(folder / "gw", [{"name": "fraud-scorer",
                                       "backend": {"type": "skops", "path": str(model)}}],
                      extra={"identity": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE],
                                                  "jwks_url": jwks.url, "tenant_claim": "tid",
                                                  "groups_claim": "groups"}},
                             "admin": part["admin"]})
    assert part["admin"]["token_file"] == "admin-token"  # the file Gateway writes its token in
    scoped = secrets.token_urlsafe(32)
    (folder / "gw").mkdir(parents=True)
    (folder / "gw" / part["admin"]["tokens"][0]["token_file"]).write_text(scoped + "\n")
    gateway.write_config()
    with gateway.log.open("wb") as out:  # Gateway.start's 30 s is short on a loaded machine
        proc = subprocess.Popen([str(ROOT / ".venv/bin/modelfence"), "serve", "--config",
                                 str(gateway.config)], stdout=out, stderr=subprocess.STDOUT)
    ctx.stack.callback(interrupt, proc, 15)
    wait_http(f"{gateway.admin_url}/admin/ready", timeout_s=120, proc=proc, log=gateway.log)
    keys = f"{gateway.admin_url}/admin/keys"
    status, doc = _admin_call(keys, gateway.admin_token)
    assert status == 200, (status, doc)
    mint = {"principal": "batch-job", "tenant": "acme", "models": ["fraud-scorer"]}
    status, doc = _admin_call(keys, scoped, mint)
    assert status == 201 and doc["key"].startswith("mf_"), (status, doc)
    status, doc = _admin_call(keys, scoped, {**mint, "tenant": "globex"})
    assert status == 403 and "admin:token:scoring-team may not grant tenant 'globex'" in str(
        doc), (status, doc)
    admin = idp.token("ec-1", sub="carol", tid="acme", groups=["modelfence-admins"])
    status, doc = _admin_call(keys, admin, mint)
    assert status == 201, (status, doc)
    other = idp.token("ec-1", sub="dave", tid="acme", groups=["analysts"])
    status, doc = _admin_call(keys, other)
    assert status == 403, (status, doc)

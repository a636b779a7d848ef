"""deploy/: the image, the compose file and the load balancer, checked without a Docker engine.

No Docker engine runs where these tests run, so deploy/ is checked two ways:

- parsed: docker-compose.yml, the Dockerfile and nginx.conf have the structure that matters
  (two replicas of one image and one config, healthy PostgreSQL and Redis first, the load
  balancer over both on the port they listen on, no secret written down), and
  deploy/modelfence.yaml validates;
- run as processes: the commands the containers run (demo-model, migrate, two gateway
  replicas, nginx) with deploy/modelfence.yaml and nginx.conf changed only where a container
  path or a compose host name must become a local one (`localize_config`, `localize_nginx`),
  against the real local PostgreSQL (a database of its own per run) and Redis.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import psycopg
import pytest
import yaml

from modelfence.audit.checkpoint import generate_keypair
from modelfence.config import load_settings
from modelfence.errors import ConfigurationError

from ..support import digits_rows, free_port, infer_body, skip_or_fail, wait_http

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GATEWAYS = ("gateway-1", "gateway-2")
#: deploy/modelfence.yaml's values that name a container path or a compose host: the only
#: ones `localize_config` may change to run a replica here.
LOCAL_CHANGES = {"server.host", "server.port", "server.admin_listen", "secret_file",
                 "admin.token_file", "stores.keys",
                 "audit.sink", "audit.checkpoint_key_file", "audit.spill_dir", "quotas.storage",
                 "quotas.budget_store", "models[0].backend.path"}
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------- reading deploy/


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def deploy_config() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "modelfence.yaml").read_text())
    return doc


def dockerfile_final_stage() -> dict[str, list[str]]:
    """Instruction -> arguments (one entry per occurrence) of the Dockerfile's last stage."""
    stages: list[dict[str, list[str]]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        op, _, args = (pending + line).partition(" ")
        pending = ""
        if op.upper() == "FROM":
            stages.append({})
        stages[-1].setdefault(op.upper(), []).append(args.strip())
    return stages[-1]


def nginx_conf() -> str:
    return (DEPLOY / "nginx.conf").read_text()


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) for a service's short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def config_target() -> str:
    """Where the compose file mounts deploy/modelfence.yaml in the replicas."""
    found = {t for t, (src, _) in mounts(compose()["services"]["gateway-1"]).items()
             if src == "./modelfence.yaml"}
    assert len(found) == 1, found
    return found.pop()


def nginx_upstream_servers(text: str) -> list[str]:
    block = re.search(r"upstream\s+\S+\s*\{(.*?)\}", text, re.S)
    assert block, "nginx.conf has no upstream block"
    return re.findall(r"^\s*server\s+([^\s;]+)", block.group(1), re.M)


def nginx_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    assert m, text
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


# ---------------------------------------------------------------- parsed


def test_compose_runs_two_replicas_of_one_image_and_config() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "lb", *GATEWAYS} <= set(services)
    assert sorted(n for n in services if n.startswith("gateway")) == list(GATEWAYS)
    target = config_target()
    for name in GATEWAYS:
        gw = services[name]
        build = gw["build"]
        assert (DEPLOY / build["context"]).resolve() == DEPLOY.parent
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert mounts(gw)[target] == ("./modelfence.yaml", "ro"), name
        spill = deploy_config()["audit"]["spill_dir"]  # writable in a read-only container
        assert mounts(gw)[spill] == ("audit-spill", "rw"), name
        # the image's ENTRYPOINT and CMD run them: no override that could drift from it
        assert "command" not in gw and "entrypoint" not in gw, name
        for dep in ("postgres", "redis"):
            assert gw["depends_on"][dep]["condition"] == "service_healthy", (name, dep)
        for dep, spec in gw["depends_on"].items():
            if dep not in ("postgres", "redis"):  # one-shot steps run to completion first
                assert spec["condition"] == "service_completed_successfully", (name, dep)
    assert services["gateway-1"] == services["gateway-2"]  # replicas: nothing differs

    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("postgres", "redis"):
        assert not services[name]["healthcheck"].get("disable"), name


def test_load_balancer_fronts_both_replicas_on_their_port() -> None:
    lb = compose()["services"]["lb"]
    port = deploy_config()["server"]["port"]
    conf = nginx_conf()
    assert lb["image"].startswith("nginx:")
    assert mounts(lb)["/etc/nginx/nginx.conf"] == ("./nginx.conf", "ro")
    assert sorted(nginx_upstream_servers(conf)) == [f"{g}:{port}" for g in GATEWAYS]
    assert not re.search(r"^\s*(least_conn|ip_hash|hash)\b", conf, re.M)  # round-robin
    listen = re.findall(r"^\s*listen\s+(\d+)", conf, re.M)
    assert len(listen) == 1
    published = [str(p).rsplit(":", 1) for p in lb["ports"]]
    assert published and all(len(p) == 2 and p[1] == listen[0] for p in published), published
    for g in GATEWAYS:
        assert lb["depends_on"][g]["condition"] == "service_healthy"
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s", conf)
    # the balancer refuses exactly what a replica would refuse, and says so the same way
    max_body = deploy_config()["server"]["max_body_bytes"]
    sizes = re.findall(r"client_max_body_size\s+(\w+);", conf)
    assert [nginx_size(s) for s in sizes] == [max_body]
    assert f"over the {max_body} byte limit" in conf


def test_no_secret_value_is_written_in_the_compose_file() -> None:
    doc = compose()
    text = (DEPLOY / "docker-compose.yml").read_text()
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|KEY", re.I)
    for name, service in doc["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping, please"
        for key, value in env.items():
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", str(value)), (
                    f"{name}.environment.{key} must come from the environment (${{VAR}}), "
                    f"not be written here")
    for password in re.findall(r"://[^/\s:@]*:([^@\s]*)@", text):  # credentials in URLs
        assert password.startswith("${"), password
    for name, service in doc["services"].items():
        command = " ".join(service.get("command") or [])
        assert not re.search(r"--requirepass\s+(?![\"']?\$)", command), name
    for name, spec in doc["secrets"].items():
        assert set(spec) == {"file"}, name  # a file made per deployment, never inline
        assert spec["file"].startswith("./secrets/"), name
    assert "secrets/" in (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
    dockerignore = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert {"deploy/secrets", "deploy/.env", ".git"} <= set(dockerignore)


def test_config_secrets_are_the_ones_compose_mounts() -> None:
    doc = compose()
    cfg = deploy_config()
    files = {cfg["secret_file"], cfg["admin"]["token_file"], cfg["audit"]["checkpoint_key_file"]}
    for name in GATEWAYS:
        mounted = {f"/run/secrets/{s}" for s in doc["services"][name]["secrets"]}
        assert files <= mounted, name
    assert all(s in doc["secrets"] for s in doc["services"]["gateway-1"]["secrets"])
    referenced = {name for value in leaves(cfg).values() if isinstance(value, str)
                  for name in ENV_REF.findall(value)}
    assert referenced == {"POSTGRES_PASSWORD", "REDIS_PASSWORD"}
    for name in GATEWAYS:
        assert referenced <= set(doc["services"][name]["environment"]), name


def test_dockerfile_runs_the_gateway_unprivileged() -> None:
    stage = dockerfile_final_stage()
    assert stage["FROM"] == ["python:3.11-slim"]
    user = stage["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), user
    port = deploy_config()["server"]["port"]
    assert str(port) in " ".join(stage["EXPOSE"]).split()
    assert json.loads(stage["ENTRYPOINT"][-1]) == ["modelfence"]
    assert json.loads(stage["CMD"][-1]) == ["serve", "--config", config_target()]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(stage["ENV"])))
    assert env["MODELFENCE_CONFIG"] == config_target()  # for `docker compose exec ... keys`
    health = stage["HEALTHCHECK"][-1]
    assert f"127.0.0.1:{port}/v2/health/live" in health and "python" in health
    text = (DEPLOY / "Dockerfile").read_text()
    install = re.search(r"pip install '\.\[([\w,]+)\]'\s*$", text, re.M)
    assert install, "pip install of the build context with its extras"
    # the extras the shipped config needs: the base install has neither (pyproject.toml)
    config = (DEPLOY / "modelfence.yaml").read_text()
    needed = {"local"} if "type: skops" in config else set()
    needed |= {"postgres"} if "postgresql://" in config else set()
    assert set(install.group(1).split(",")) == needed
    assert "dev" not in install.group(1)


def test_deploy_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    path = DEPLOY / "modelfence.yaml"
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="POSTGRES_PASSWORD is not set"):
        load_settings(path)
    monkeypatch.setenv("POSTGRES_PASSWORD", "pg-pass")
    monkeypatch.setenv("REDIS_PASSWORD", "redis-pass")
    s = load_settings(path)
    assert (s.server.host, s.server.port) == ("0.0.0.0", 8000)
    assert s.server.admin_listen == "0.0.0.0:9090"  # the backend network only, not published
    pg = "postgresql://modelfence:pg-pass@postgres:5432/modelfence"
    assert s.stores.keys == s.audit.sink == s.quotas.budget_store == pg
    assert s.quotas.storage == "redis://:redis-pass@redis:6379/0"
    assert s.audit.durability == "strict"
    assert s.audit.checkpoint_key_file == Path("/run/secrets/audit-checkpoint.pem")
    assert [m.backend.path for m in s.models if m.backend.type == "skops"] == [
        Path("/models/digits.skops")]


# ---------------------------------------------------------------- mapped to this machine


def leaves(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        return {k: v for key, val in doc.items()
                for k, v in leaves(val, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(doc, list):
        return {k: v for i, val in enumerate(doc) for k, v in leaves(val, f"{prefix}[{i}]").items()}
    return {prefix: doc}


def localize_config(doc: dict[str, Any], *, port: int, root: Path, pg: SplitResult,
                    database: str, redis_port: int, admin_port: int = 19090
                    ) -> dict[str, Any]:
    """deploy/modelfence.yaml as one replica runs here instead of in its container.

    0.0.0.0 -> loopback and the ports -> `port` and `admin_port`; an absolute container
    path -> the same path under `root`; the compose hosts `postgres` and `redis` -> the
    local servers, PostgreSQL with its user and this run's database. `${...}` references
    are kept as they are.
    """
    def local(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: local(v) for k, v in value.items()}
        if isinstance(value, list):
            return [local(v) for v in value]
        if not isinstance(value, str):
            return value
        if value.startswith(("/run/secrets/", "/models/", "/var/lib/modelfence/")):
            return str(root / value.lstrip("/"))
        url = urlsplit(value)
        if url.scheme.startswith("postgres") and url.hostname == "postgres":
            return (f"{url.scheme}://{pg.username}:{url.password}@{pg.hostname}:{pg.port or 5432}"
                    f"/{database}")
        if url.scheme == "redis" and url.hostname == "redis":
            return url._replace(netloc=f":{url.password}@127.0.0.1:{redis_port}").geturl()
        return value

    out: dict[str, Any] = local(doc)
    out["server"] = {**out["server"], "host": "127.0.0.1", "port": port,
                     "admin_listen": f"127.0.0.1:{admin_port}"}
    return out


NGINX_PATHS = ("/var/log/nginx/", "/var/cache/nginx/", "/run/nginx.pid")


def localize_nginx(text: str, *, listen: int, upstreams: dict[str, int], root: Path) -> str:
    """nginx.conf as the load balancer runs here: listen on loopback, the replicas' compose
    names -> their local ports, the image's log, cache and pid paths -> under `root`."""
    replacements = {"listen 80;": f"listen 127.0.0.1:{listen};"}
    port = deploy_config()["server"]["port"]
    replacements |= {f"server {g}:{port} ": f"server 127.0.0.1:{p} " for g, p in upstreams.items()}
    replacements |= {p: str(root / p.lstrip("/")) + ("/" if p.endswith("/") else "")
                     for p in NGINX_PATHS}
    for old, new in replacements.items():
        assert old in text, f"nginx.conf no longer has {old!r}: update localize_nginx"
        text = text.replace(old, new)
    return text


def test_localize_config_changes_only_container_paths_and_hosts(tmp_path: Path) -> None:
    original = deploy_config()
    local = localize_config(original, port=18000, root=tmp_path,
                            pg=urlsplit("postgresql://postgres@127.0.0.1:5432/postgres"),
                            database="modelfence_deploy_x", redis_port=6379)
    before, after = leaves(original), leaves(local)
    assert set(before) == set(after)
    assert {k for k in before if before[k] != after[k]} == LOCAL_CHANGES
    for key, value in after.items():
        text = str(value)
        assert not text.startswith(("/run/", "/models/", "/var/", "0.0.0.0")), key
        assert "@postgres:" not in text and "@redis:" not in text, key
    assert "${POSTGRES_PASSWORD}" in local["stores"]["keys"]  # still read from the environment


def test_localize_nginx_changes_only_paths_ports_and_hosts(tmp_path: Path) -> None:
    text = nginx_conf()
    local = localize_nginx(text, listen=18080, upstreams={"gateway-1": 1, "gateway-2": 2},
                           root=tmp_path)
    changed = [(a, b) for a, b in zip(text.splitlines(), local.splitlines(), strict=True)
               if a != b]
    pattern = r"listen |server gateway-|error_log |access_log |pid |\w+_temp_path "
    assert all(re.match(rf"\s*({pattern})", a) for a, _ in changed), changed
    assert "gateway-" not in "".join(b for _, b in changed)


# ---------------------------------------------------------------- the stack, as processes


def _redis_reachable(port: int = 6379) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            answer = s.recv(64)
    except OSError as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None if answer.startswith(b"+PONG") else f"answered {answer[:40]!r}"


def _need(problem: str | None, what: str) -> None:
    if problem is not None:
        skip_or_fail(f"{what} ({problem})")


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def call(method: str, url: str, *, token: str | None = None, body: Any = None
         ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


@dataclass
class Stack:
    """The compose services as local processes: two replicas, maybe nginx, shared stores."""

    folder: Path
    env: dict[str, str]
    configs: list[Path]
    urls: list[str]
    admin_urls: list[str]  # each replica's admin listener
    admin_token: str
    tag: str  # in principal names: shared Redis counts rate limits per principal
    lb: str | None = None
    lb_missing: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nginx: subprocess.Popen[bytes] | None = None

    def modelfence(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI with the replicas' environment (and none of this process's MODELFENCE_*)."""
        return subprocess.run([sys.executable, "-m", "modelfence", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)

    def admin_of(self, replica: str) -> str:
        """The admin listener of the replica at `replica` (its public URL)."""
        return self.admin_urls[self.urls.index(replica)]

    def create_key(self, replica: str, principal: str) -> tuple[str, str]:
        status, body = call("POST", f"{self.admin_of(replica)}/admin/keys",
                            token=self.admin_token,
                            body={"principal": f"{principal}-{self.tag}", "tenant": "acme",
                                  "models": ["digits"]})
        assert status == 201, body
        return body["key"], body["key_id"]

    def revoke(self, replica: str, key_id: str) -> None:
        status, body = call("DELETE", f"{self.admin_of(replica)}/admin/keys/{key_id}",
                            token=self.admin_token)
        assert status == 200, body

    def stop(self) -> None:
        _stop(self.nginx, signal.SIGQUIT)  # nginx's graceful stop
        for proc in self.procs:
            _stop(proc)


def infer(base: str, key: str) -> tuple[int, Any]:
    return call("POST", f"{base}/v2/models/digits/infer", token=key, body=infer_body(digits_rows()))


def localized_argv(argv: list[str], service: dict[str, Any], config: Path, root: Path
                   ) -> list[str]:
    """A container's command line as a local process: same arguments, local paths."""
    head = {"modelfence": [sys.executable, "-m", "modelfence"], "python": [sys.executable]}
    files = {target: str(DEPLOY / src) for target, (src, _) in mounts(service).items()
             if src.startswith("./")}
    files[config_target()] = str(config)
    out = list(head.get(argv[0], [argv[0]]))
    for arg in argv[1:]:
        out.append(files.get(arg) or (str(root / arg.lstrip("/")) if arg.startswith("/models/")
                                      else arg))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Stack]:
    _need(_redis_reachable(), "Redis at 127.0.0.1:6379 is not answering")
    root = tmp_path_factory.mktemp("deploy")
    pg = urlsplit(pg_url)
    tag = secrets.token_hex(4)
    database = f"modelfence_deploy_{tag}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    services = compose()["services"]
    stage = dockerfile_final_stage()
    entrypoint = json.loads(stage["ENTRYPOINT"][-1])
    st: Stack | None = None
    try:
        # what `docker compose up` needs first: the secrets (README, Deployment)
        secret_dir = root / "run" / "secrets"
        secret_dir.mkdir(parents=True)
        admin_token = secrets.token_urlsafe(32)
        (secret_dir / "server-secret").write_text(secrets.token_urlsafe(48))
        (secret_dir / "admin-token").write_text(admin_token)
        generate_keypair(secret_dir / "audit-checkpoint.pem", root / "audit-checkpoint.pub.pem")

        ports = [free_port() for _ in GATEWAYS]
        admin_ports = [free_port() for _ in GATEWAYS]
        configs = []
        for name, port, admin_port in zip(GATEWAYS, ports, admin_ports, strict=True):
            doc = localize_config(deploy_config(), port=port, root=root, pg=pg,
                                  database=database, redis_port=6379, admin_port=admin_port)
            configs.append(root / f"{name}.yaml")
            configs[-1].write_text(yaml.safe_dump(doc, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFENCE_")}
        # the local PostgreSQL trusts loopback, so any password does; the local Redis has
        # none, and an empty one sends no AUTH
        env |= {"POSTGRES_PASSWORD": secrets.token_hex(8), "REDIS_PASSWORD": "",
                "PYTHONUNBUFFERED": "1"}
        st = Stack(root, env, configs, [f"http://127.0.0.1:{p}" for p in ports],
                   [f"http://127.0.0.1:{p}" for p in admin_ports], admin_token, tag)

        # the one-shot services, in their depends_on order
        for name in ("demo-model", "migrate"):
            svc = services[name]
            argv = [*svc.get("entrypoint", entrypoint), *svc["command"]]
            done = subprocess.run(localized_argv(argv, svc, configs[0], root), env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{name}: {done.stdout}\n{done.stderr}"

        # the replicas: the image's ENTRYPOINT + CMD, started together as compose does
        cmd = json.loads(stage["CMD"][-1])
        for name, config in zip(GATEWAYS, configs, strict=True):
            with (root / f"{name}.log").open("wb") as log:
                st.procs.append(subprocess.Popen(
                    localized_argv([*entrypoint, *cmd], services[name], config, root),
                    stdout=log, stderr=subprocess.STDOUT, env=env))
        for name, url, proc in zip(GATEWAYS, st.urls, st.procs, strict=True):
            wait_http(f"{url}/v2/health/live", proc=proc, log=root / f"{name}.log")

        nginx = _nginx()
        if nginx is None:
            st.lb_missing = "no nginx binary (Debian: apt-get install nginx)"
        else:
            prefix = root / "nginx"
            for sub in ("var/log/nginx", "var/cache/nginx", "run"):
                (prefix / sub).mkdir(parents=True)
            lb_port = free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(localize_nginx(nginx_conf(), listen=lb_port, root=prefix,
                                           upstreams=dict(zip(GATEWAYS, ports, strict=True))))
            log_path = prefix / "nginx.out"
            with log_path.open("wb") as log:
                st.nginx = subprocess.Popen(
                    [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(log_path),
                     "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
            st.lb = f"http://127.0.0.1:{lb_port}"
            wait_http(f"{st.lb}/v2/health/live", timeout_s=10, proc=st.nginx, log=log_path)
        yield st
    finally:
        if st is not None:
            st.stop()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_key_made_on_replica_1_works_on_replica_2(stack: Stack) -> None:
    r1, r2 = stack.urls
    key, _ = stack.create_key(r1, "shared-key-user")
    status, body = infer(r2, key)
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["probabilities", "label"]
    assert infer(r1, key)[0] == 200


def test_key_revoked_on_replica_2_is_refused_by_replica_1_within_a_second(stack: Stack
                                                                          ) -> None:
    r1, r2 = stack.urls
    key, key_id = stack.create_key(r1, "revoked-key-user")
    assert infer(r1, key)[0] == 200  # replica 1 has looked the key up (and caches it)
    sent = time.monotonic()
    stack.revoke(r2, key_id)
    flipped = None
    while time.monotonic() < sent + 1.0:
        if infer(r1, key)[0] == 401:
            flipped = time.monotonic() - sent
            break
        time.sleep(0.05)
    # replica 1's cached lookup predates the revocation, and lives key_cache_ttl_s = 1 s
    time.sleep(max(0.0, sent + 1.02 - time.monotonic()))
    status, body = infer(r1, key)
    assert status == 401, (body, flipped)
    assert infer(r2, key)[0] == 401


def test_load_balancer_spreads_over_both_replicas(stack: Stack) -> None:
    if stack.lb is None:
        _need(stack.lb_missing, "the load balancer part needs nginx")
    lb = stack.lb
    assert lb is not None

    def answered() -> list[float]:
        counts = []
        for url in stack.admin_urls:  # Prometheus scrapes each replica's admin listener
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:  # noqa: S310
                text = resp.read().decode()
            counts.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith("modelfence_requests_total{")
                              and 'action="infer"' in line))
        return counts

    key, key_id = stack.create_key(stack.urls[0], "through-the-lb")  # no admin via the lb
    before = answered()
    for _ in range(8):
        status, body = infer(lb, key)
        assert status == 200, body
    deadline = time.monotonic() + 2  # metrics are counted just after the answer is sent
    while True:
        delta = [b - a for a, b in zip(before, answered(), strict=True)]
        if sum(delta) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(delta) == 8 and all(d >= 1 for d in delta), delta  # both replicas answered

    sent = time.monotonic()
    stack.revoke(stack.urls[1], key_id)
    time.sleep(max(0.0, sent + 1.02 - time.monotonic()))
    assert [infer(lb, key)[0] for _ in range(4)] == [401] * 4

    # a body over server.max_body_bytes stops at the balancer, in the gateway's error shape
    max_body = deploy_config()["server"]["max_body_bytes"]
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(lb).port, timeout=5)
    try:
        conn.putrequest("POST", "/v2/models/digits/infer")
        conn.putheader("Content-Length", str(max_body + 1))
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert "byte limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()
    # per-replica metrics are scraped from the replicas, not through the balancer
    assert call("GET", f"{lb}/metrics")[0] == 404
    # nor the admin API, nor a readiness that names models
    assert call("GET", f"{lb}/admin/keys", token=stack.admin_token)[0] == 404
    assert call("GET", f"{lb}/v2/health/ready") == (200, {"ready": True})


def test_audit_log_of_both_replicas_verifies_as_one_trail(stack: Stack) -> None:
    """Runs last in this module: it stops the replicas so that each seals its records."""
    r1, r2 = stack.urls
    key, key_id = stack.create_key(r1, "audited")
    assert infer(r2, key)[0] == 200
    stack.revoke(r2, key_id)
    stack.stop()

    result = stack.modelfence("audit", "verify", "--config", str(stack.configs[0]), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["signatures_checked"], report
    assert report["checkpoints"] >= 1 and report["unsealed"] == 0, report
    assert report["records"] >= 3, report

    result = stack.modelfence("audit", "query", "--config", str(stack.configs[1]),
                              "--limit", "1000", "--json")
    assert result.returncode == 0, result.stderr
    records = [r["record"] for r in json.loads(result.stdout)["records"]]
    actions = {(r.get("action"), r.get("key_id"), r.get("status")) for r in records}
    assert ("admin:create-key", key_id, 201) in actions  # written by replica 1
    assert ("admin:revoke-key", key_id, 200) in actions  # written by replica 2
    assert any(r.get("principal") == f"audited-{stack.tag}" and r.get("status") == 200
               for r in records)

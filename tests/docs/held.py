"""What the docs tests check of the snippets they cannot run (`<!-- not-run: reason -->`).

Every held snippet is named here by its page and first command, with the check that runs in
its place: the Makefile recipe a `make` line runs, the option parser every `modelfence`
command line goes through, the extras a `pip install` line names, a configuration fragment
merged into the configuration it extends, and, for Kubernetes, vLLM and Docker Compose, that
the names, ports, files and environment the snippet shares with the page's configuration and
deploy/ agree (the commands inside a container run against a local gateway). A held snippet
without an entry fails tests/docs/test_snippets.py, so none goes unchecked.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .held_runs import (
    admin_fragment_served,
    compose_up,
    curl_churn,
    deploy_secrets,
    replica_commands,
)
from .snippets import ROOT, Snippet, snippets

MAKE_STAMPS = (".venv/.installed", ".venv/.installed-dev", ".venv-mlserver/.installed",
               ".venv/.installed-examples")


@dataclass
class Context:
    """What a check may use: a folder of its own, the demo when it needs a gateway."""

    tmp_path: Path
    demo: Callable[[], Any]  # the docs tests' demo fixture, started on first use
    stack: ExitStack  # what a check started, stopped after the last check
    cache: dict[str, Any] = field(default_factory=dict)


Check = Callable[[Snippet, Context], None]


def commands(code: str) -> list[str]:
    """The snippet's command lines: continuations joined, comments and activation dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#") and line != ". .venv/bin/activate":
            out.append(line)
    return out


def page_snippets(page: str) -> list[Snippet]:
    return snippets(ROOT / page)


# --- make ---------------------------------------------------------------------------------

#: What each documented `make` target must run (its recipe, as `make -n` prints it).
MAKE_RECIPES = {
    "test": ["MODELFENCE_TEST_MLSERVER=", "/.venv-mlserver/bin/mlserver .venv/bin/python -m "
             "pytest -n auto"],
    "lint": [".venv/bin/ruff check src tests bench docs/hooks", ".venv/bin/mypy",
             ".venv/bin/lint-imports"],
    "bench": [".venv/bin/python bench/overhead.py"],
}


def make_recipe(goal: str) -> str:
    """`make -n GOAL`, its install steps taken as done (they are checked by `make` itself)."""
    old = [arg for stamp in MAKE_STAMPS for arg in ("-o", stamp)]
    result = subprocess.run(["make", "--no-print-directory", "-n", *old, *shlex.split(goal)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_make_lines(snip: Snippet, ctx: Context) -> None:
    """Each `make GOAL` line runs the recipe the page says it runs."""
    goals = [re.sub(r"\s+", " ", c.removeprefix("make ").strip()) for c in commands(snip.code)]
    assert goals and all(g in MAKE_RECIPES for g in goals), goals
    for goal in goals:
        recipe = make_recipe(goal)
        for part in MAKE_RECIPES[goal]:
            assert part in recipe, f"make {goal}: {part!r} not in its recipe:\n{recipe}"


# --- the command line ---------------------------------------------------------------------


def parse_modelfence(line: str, folder: Path) -> None:
    """Parse a `modelfence ...` line as the command would, without running it; the files it
    names are made (empty) in `folder`, which stands for the reader's working directory."""
    import typer

    from modelfence.cli.main import app

    args = shlex.split(line)
    assert args[0] == "modelfence", line
    args = args[1:]
    for arg in args:
        if not arg.startswith(("-", "http://", "https://", "tcp://")) and re.search(
                r"\.\w+$", arg):
            path = folder / arg
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    # typer ships its own click: its groups and errors are not `click`'s, so duck typing
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("modelfence", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None, line
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)


def known_values(line: str) -> None:
    """The option values a command checks only once it runs: corpus halves, attacks, thieves."""
    from modelfence.llm.corpus.run import SUITES
    from modelfence.redteam.attacks import ATTACKS
    from modelfence.redteam.thieves import THIEVES

    args = shlex.split(line)
    known = {"--suite": SUITES, "--attack": tuple(ATTACKS), "--thief": THIEVES}
    for option, value in itertools.pairwise(args):
        if option in known:
            assert value.split(":")[0] in known[option], f"{line}: {option} {value}: not one " \
                f"of {known[option]}"


def check_modelfence_lines(snip: Snippet, ctx: Context) -> None:
    """Every `modelfence` line is accepted by the command's own parser (options, choices,
    required arguments), with the files it names present, and names corpus halves, attacks
    and thieves that exist."""
    import os

    lines = commands(snip.code)
    assert lines and all(c.startswith("modelfence ") for c in lines), lines
    folder = ctx.tmp_path / "cli"
    folder.mkdir(exist_ok=True)
    here = Path.cwd()
    os.chdir(folder)
    try:
        for line in lines:
            try:
                parse_modelfence(line, folder)
            except Exception as exc:  # typer's click.UsageError and kin: say what it says
                if not hasattr(exc, "format_message"):
                    raise
                raise AssertionError(f"{line}: {exc.format_message()}") from exc
            known_values(line)
    finally:
        os.chdir(here)


# --- pip ----------------------------------------------------------------------------------


def check_pip_lines(snip: Snippet, ctx: Context) -> None:
    """Each `pip install` names this project and extras it has, `all` has every extra but
    the tools', and what each line installs is in the environment the docs tests run in."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]

    def expand(names: set[str]) -> list[Requirement]:
        out = []
        for name in names:
            for spec in extras[name]:
                req = Requirement(spec)
                out += expand(req.extras) if req.name == project["name"] else [req]
        return out

    for line in commands(snip.code):
        spec = shlex.split(line)
        assert spec[:2] == ["pip", "install"] and len(spec) == 3, line
        req = Requirement(spec[2])
        assert req.name == project["name"], line
        assert req.extras <= set(extras), f"{line}: no extra {req.extras - set(extras)}"
        for dep in expand(set(req.extras)):
            try:
                installed = version(dep.name)
            except PackageNotFoundError as exc:
                raise AssertionError(f"{line}: {dep.name} is not installed") from exc
            assert dep.specifier.contains(installed, prereleases=True), (line, dep, installed)
    everything = {Requirement(s).name for s in extras["all"]}
    named = {n for s in extras["all"] for n in Requirement(s).extras}
    assert everything == {project["name"]}
    assert named == set(extras) - {"all", "docs", "dev"}, named


# --- configuration fragments --------------------------------------------------------------


def merged(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`part` laid over `base`: sections merged, list entries merged by `name`."""
    out = dict(base)
    for key, value in part.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merged(old, value)
        elif isinstance(old, list) and isinstance(value, list) and all(
                isinstance(v, dict) and "name" in v for v in [*old, *value]):
            by_name = {v["name"]: v for v in old}
            for v in value:
                by_name[v["name"]] = merged(by_name.get(v["name"], {}), v)
            out[key] = list(by_name.values())
        else:
            out[key] = value
    return out


def validate(doc: dict[str, Any], where: str) -> None:
    from modelfence.config import settings_from_mapping

    settings_from_mapping(doc, source=where)


def check_admin_fragment(snip: Snippet, ctx: Context) -> None:
    """The `admin` section validates once `identity.jwt` names a groups claim, as its
    marker says; without one, the loader refuses `admin.oidc` and says why; and served, each
    of its admins gets in as far as it says (tests/docs/held_runs.py)."""
    part = yaml.safe_load(snip.code)
    jwt = {"issuer": "https://idp.example.com", "audiences": ["modelfence"],
           "jwks_url": "https://idp.example.com/jwks", "tenant_claim": "tenant",
           "groups_claim": "groups"}
    validate({**part, "identity": {"jwt": jwt}}, snip.where)
    try:
        validate({**part, "identity": {"jwt": {**jwt, "groups_claim": None}}}, snip.where)
    except Exception as exc:  # the one-line error the gateway prints
        assert "groups_claim" in str(exc), exc
    else:
        raise AssertionError("admin.oidc without a groups claim was accepted")
    admin_fragment_served(part, ctx)


# --- agreement with what the snippet stands for -------------------------------------------


def check_kubectl(snip: Snippet, ctx: Context) -> None:
    """The kubectl lines name the InferenceService of the page's manifest, the Service KServe
    makes for its predictor, and the port the configuration's local alternative uses; the
    NetworkPolicy selects the same service; the curl line runs against an OIP stand-in."""
    page = page_snippets("docs/tutorials/kserve.md")
    docs = [d for s in page if s.kind == "yaml" for d in [yaml.safe_load(s.code)]
            if "kind" in d]
    service = next(d for d in docs if d["kind"] == "InferenceService")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    config = next(yaml.safe_load(s.code) for s in page
                  if s.kind == "yaml" and "server" in (yaml.safe_load(s.code) or {}))
    backend = config["models"][0]["backend"]
    lines = commands(snip.code)
    assert lines[0] == f"kubectl -n {namespace} get inferenceservice {name}"
    assert lines[1] == f"kubectl -n {namespace} port-forward service/{name}-predictor 8080:80"
    assert lines[2] == f"curl -s http://127.0.0.1:8080/v2/models/{name}"
    assert backend["url"] == f"http://{name}-predictor.{namespace}.svc.cluster.local"
    assert "# or http://127.0.0.1:8080" in next(s.code for s in page if "upstream_model" in s.code)
    assert backend["upstream_model"] == name
    assert service["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert policy["metadata"]["namespace"] == namespace
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": name}
    assert curl_churn(lines[2])["name"] == name


def check_vllm(snip: Snippet, ctx: Context) -> None:
    """`vllm serve` serves the model the configuration names upstream, on the host and port
    of its upstream URL, demanding the key in the file the gateway sends."""
    page = page_snippets("docs/tutorials/vllm.md")
    config = next(yaml.safe_load(s.code) for s in page
                  if s.kind == "yaml" and "server" in (yaml.safe_load(s.code) or {}))
    model = config["llm"]["models"][0]
    args = shlex.split(commands(snip.code)[0].replace('"$(cat upstream-key)"', "KEYFILE"))
    assert args[:3] == ["vllm", "serve", model["upstream_model"]], args
    opts = dict(zip(args[3::2], args[4::2], strict=True))
    assert model["upstream"] == f"http://{opts['--host']}:{opts['--port']}/v1"
    assert opts["--api-key"] == "KEYFILE" and model["api_key_file"] == "upstream-key"


def check_deploy_secrets(snip: Snippet, ctx: Context) -> None:
    """Run in a copy of deploy/ (sudo is this test's own user, who may chgrp): it makes
    exactly the secret files compose mounts and the variables compose reads, readable by
    group 10001, and a public key that is the audit key's."""
    deploy_secrets(snip, ctx)


def check_compose_up(snip: Snippet, ctx: Context) -> None:
    """Without a Docker engine: the compose file builds the image from the Dockerfile at
    its context, the Dockerfile copies what exists, and the services `ps` should show
    healthy have health checks."""
    compose_up(snip)


def check_replica_commands(snip: Snippet, ctx: Context) -> None:
    """A replica's commands against a local gateway: the deploy config's model entry, made by
    deploy/demo_model.py, and admin token file (step 1's), SQLite stores; `docker compose exec
    gateway-1 CMD` runs CMD with the MODELFENCE_CONFIG the image sets, `docker compose cp`
    copies the file demo_model.py wrote."""
    replica_commands(snip, ctx)


def check_prometheus_config(snip: Snippet, ctx: Context) -> None:
    """The scrape configuration loads the shipped rules (`promtool check config` reads both,
    next to each other as the comment says), under the job name the rules' `up` alert uses."""
    import shutil

    from ..support import skip_or_fail

    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (Debian package prometheus)")
    rules = ROOT / "deploy" / "prometheus" / "modelfence-rules.yml"
    doc = yaml.safe_load(snip.code)
    assert doc["rule_files"] == [rules.name]
    assert [job["job_name"] for job in doc["scrape_configs"]] == ["modelfence"]
    assert 'up{job="modelfence"}' in rules.read_text()
    folder = ctx.tmp_path / "prometheus"
    folder.mkdir()
    shutil.copy(rules, folder / rules.name)
    (folder / "prometheus.yml").write_text(snip.code)
    done = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=folder,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 14 rules found" in done.stdout + done.stderr


#: Each held snippet by (page, first command), with what checks it.
HELD: dict[tuple[str, str], Check] = {
    ("README.md", "make test"): check_make_lines,
    ("docs/getting-started.md", "make test"): check_make_lines,
    ("docs/development.md", "make lint"): check_make_lines,
    ("docs/install.md", "pip install modelfence"): check_pip_lines,
    ("docs/concepts/watermark.md", "modelfence verify-ownership"): check_modelfence_lines,
    ("docs/concepts/redteam.md", "modelfence assess model.skops"): check_modelfence_lines,
    ("docs/benchmarks/llm-corpus.md", "modelfence llm evaluate"): check_modelfence_lines,
    ("docs/concepts/identity.md", "admin:"): check_admin_fragment,
    ("docs/tutorials/kserve.md", "kubectl -n models get"): check_kubectl,
    ("docs/tutorials/vllm.md", "vllm serve"): check_vllm,
    ("docs/operations/deployment.md", "cd deploy"): check_deploy_secrets,
    ("docs/operations/deployment.md", "docker compose up"): check_compose_up,
    ("docs/operations/deployment.md", 'ADMIN="$(cat'): check_replica_commands,
    ("docs/operations/deployment.md", "docker compose exec"): check_replica_commands,
    ("docs/operations/deployment.md", "docker compose cp"): check_replica_commands,
    ("docs/operations/dashboards.md", "global:"): check_prometheus_config,
    ("docs/operations/siem.md", "modelfence siem test"): check_modelfence_lines,
}


#: Checks whose snippets on one page share what the first starts: run in one test.
SHARED_STARTS: tuple[Check, ...] = (check_replica_commands,)


def check_for(snip: Snippet) -> Check | None:
    """The check of a held snippet: its page's longest entry that starts its first command."""
    page = str(snip.page.relative_to(ROOT))
    found = sorted(((len(start), check) for (where, start), check in HELD.items()
                    if where == page and snip.first_line.startswith(start)),
                   key=lambda item: -item[0])
    return found[0][1] if found else None

"""The docs tests' demo (what `make demo` runs, in a home of its own) and their summary."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import free_port_pair, interrupt, wait_http
from .held import check_for
from .snippets import PAGE_SECONDS, ROOT, all_snippets


@dataclass(frozen=True)
class Demo:
    """Where a snippet finds what a reader who ran `make demo` has."""

    home: Path      # $HOME of the snippets: the demo lives in $HOME/.modelfence/demo
    workdir: Path   # stands for the repository root: .venv is there
    port: int
    env: dict[str, str]


def snippet_env(home: Path) -> dict[str, str]:
    """A fresh login's environment: its own HOME, no virtual environment active."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MODELFENCE_") and k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and p != venv_bin)
    env.update(HOME=str(home), COLUMNS="80")
    return env


REPOSITORY_ENTRIES = (".venv", "examples", "mkdocs.yml", "docs", "src", "pyproject.toml",
                      "Makefile", "bench", "deploy")


def repository_copy(folder: Path) -> Path:
    """A folder that stands for the repository root: links to what the snippets use."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in REPOSITORY_ENTRIES:
        (folder / entry).symlink_to(ROOT / entry)
    return folder


def demo_command(port: int) -> list[str]:
    """What `make demo` runs (the Makefile's recipe, from `make -n`), on another port."""
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed",
                             "demo", f"PORT={port}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()
    assert len(recipe) == 1 and recipe[0] == f".venv/bin/modelfence demo --port {port}", recipe
    return recipe[0].split()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`modelfence demo` as `make demo` starts it, on free ports, in a home of its own."""
    home = tmp_path_factory.mktemp("home")
    workdir = repository_copy(tmp_path_factory.mktemp("repo"))
    env = snippet_env(home)
    port = free_port_pair()
    log = home / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(demo_command(port), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=workdir)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=120, proc=proc, log=log)
        yield Demo(home, workdir, port, env)
    finally:
        interrupt(proc, 15)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name every snippet the docs tests do not run, and why: none is skipped silently."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    if not any(getattr(r, "nodeid", "").startswith("tests/docs/") for r in reports):
        return
    if PAGE_SECONDS:
        terminalreporter.section("docs pages run (seconds, 3 side by side)")
        for page, seconds in sorted(PAGE_SECONDS.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:6.1f}  {page}")
    held = [s for s in all_snippets() if s.not_run]
    terminalreporter.section(f"docs snippets not run: {len(held)} of {len(all_snippets())}, "
                             "each checked as tests/docs/held.py says")
    for snip in held:
        check = check_for(snip)
        terminalreporter.write_line(f"{snip.where} ({snip.kind}): {snip.not_run} "
                                    f"[{check.__name__ if check else 'NOT CHECKED'}]")


"""The docs tests' demo (README's `make demo`, in a home of its own) and their summary."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import free_port_pair, wait_http
from .held import check_for
from .snippets import PAGE_SECONDS, ROOT, Snippet, all_snippets, snippets


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


REPOSITORY_ENTRIES = ("examples", "mkdocs.yml", "docs", "src", "pyproject.toml",
                      "Makefile", "bench", "deploy")
#: Make's install stamps (see the Makefile) of the extras the repository's environment holds:
#: `make dev` installs every extra, so with it each stamp is as good as made.
STAMPS = (".installed", ".installed-dev", ".installed-examples")


def repository_copy(folder: Path) -> Path:
    """A folder that stands for the repository root: links to what the snippets use.

    Its `.venv` is a folder of links to the repository's environment, with Make's install
    stamps of its own made now: a `make demo` or `make example` in a snippet runs its recipe,
    not a `pip install` into the shared environment when pyproject.toml is newer than the
    stamps (someone editing it); the docs tests run in that environment, installed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for entry in REPOSITORY_ENTRIES:
        (folder / entry).symlink_to(ROOT / entry)
    venv = ROOT / ".venv"
    (folder / ".venv").mkdir()
    for part in venv.iterdir():
        if not part.name.startswith(".installed"):
            (folder / ".venv" / part.name).symlink_to(part)
    if (venv / ".installed-dev").exists():
        for stamp in STAMPS:
            (folder / ".venv" / stamp).touch()
    return folder


def demo_snippet() -> Snippet:
    """README's `make demo` block: the command the docs tests start their demo with."""
    return next(s for s in snippets(ROOT / "README.md") if s.is_demo)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """README's `make demo` block run as pasted, in a home of its own, Make's PORT a free one
    (the admin listener takes the next); every page's identical block waits for it. At the
    end it gets Ctrl+C's signal, and must exit as Ctrl+C leaves it, without a traceback."""
    home = tmp_path_factory.mktemp("home")
    workdir = repository_copy(tmp_path_factory.mktemp("repo"))
    port = free_port_pair()
    env = {**snippet_env(home), "PORT": str(port)}
    log = home / "demo.log"
    snip = demo_snippet()
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", snip.code], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=workdir, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=120, proc=proc, log=log)
        yield Demo(home, workdir, port, snippet_env(home))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = log.read_text(errors="replace")
    assert proc.returncode in (0, 130, -signal.SIGINT), \
        f"{snip.where} exited {proc.returncode} after Ctrl+C:\n{said[-3000:]}"
    assert "Traceback" not in said, f"{snip.where} printed a traceback:\n{said[-3000:]}"


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


"""Fenced snippets of README.md and docs/: found, classified, and turned into scripts.

A page's runnable snippets are meant to be pasted in order into one terminal, from the
repository root; so the test runs them the same way, as one bash script per page in which each
Python snippet is written to a file and run with the virtual environment's python. A snippet
that cannot run here carries `<!-- not-run: reason -->` on the line before its fence.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py", "python3"}
YAML = {"yaml", "yml"}
CEDAR = {"cedar"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.+?)\s*-->$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
#: Seconds each page's snippets took in this session (printed in the summary).
PAGE_SECONDS: dict[str, float] = {}
ACTIVATE = ". .venv/bin/activate"
# `modelfence` as a command: at the start of a line or after a pipe, `&&`, `;`, `$(` or `time`
BARE_COMMAND = re.compile(r"(^|[|;&(]\s*|\$\(\s*|\btime\s+)modelfence\b")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        if self.lang in SHELL:
            return "shell"
        if self.lang in PYTHON:
            return "python"
        if self.lang in YAML:
            return "yaml"
        if self.lang in CEDAR:
            return "cedar"
        return None

    @property
    def runnable(self) -> bool:
        """A shell or Python snippet not marked `not-run` (YAML and Cedar are validated)."""
        return self.kind in {"shell", "python"} and not self.not_run


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets(page: Path) -> list[Snippet]:
    """Every fenced block of a page, with the not-run reason written just before it."""
    found: list[Snippet] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        reason = NOT_RUN.match(before)
        found.append(Snippet(page, start + 1, lang.lower(), "\n".join(body) + "\n",
                             reason.group(1) if reason else None))
    return found


def all_snippets() -> list[Snippet]:
    return [s for page in pages() for s in snippets(page) if s.kind]


def convention_problems(snippet: Snippet) -> list[str]:
    """What makes a snippet fail as pasted on a fresh machine, found without running it."""
    problems = []
    code = snippet.code
    if snippet.kind == "shell":
        uses = [ln for ln in code.splitlines()
                if BARE_COMMAND.search(ln) and "exec" not in ln.split("modelfence")[0]]
        first = next((ln.strip() for ln in code.splitlines()
                      if ln.strip() and not ln.strip().startswith("#")), "")
        if uses and first != ACTIVATE:
            problems.append(f"uses `modelfence` but does not start with `{ACTIVATE}`")
        if re.search(r"@~", code):
            problems.append("`@~/…` is not expanded by the shell; write @\"$HOME/…\"")
    if snippet.kind == "python":
        pooled = re.search(r"\bassess\(|ProcessPool|multiprocessing|workers=", code)
        if pooled and '__name__ == "__main__"' not in code:
            problems.append("uses process pools without `if __name__ == \"__main__\":`")
    return problems


def page_script(page_snippets: list[Snippet], folder: Path, ports: dict[int, int]) -> str:
    """One bash script running a page's runnable snippets in order, as a user pastes them.

    `ports` maps the documented demo ports (8000 and its admin listener 8001), and 8200 of a
    gateway a page starts itself, to free ones; nothing else in the snippets is changed.
    """
    parts = ["set -euo pipefail"]
    for n, snip in enumerate(page_snippets):
        code = snip.code
        for documented, actual in ports.items():
            code = code.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{actual}")
        parts.append(f"echo {shlex.quote('>>> ' + snip.where)} >&2")
        if snip.kind == "python":
            path = folder / f"snippet_{n}.py"
            path.write_text(code)
            parts.append(f".venv/bin/python {shlex.quote(str(path))}")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"

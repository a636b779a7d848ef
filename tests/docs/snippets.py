"""Fenced snippets of README.md and docs/: found, classified, and turned into scripts.

A page's runnable snippets are meant to be pasted in order into one terminal, from the
repository root; so the test runs them the same way, as one bash script per page in which each
Python snippet is written to a file and run with the virtual environment's python. Comments on
the lines just before a fence say how a snippet runs:

- `<!-- serves: URL -->`: it serves until Ctrl+C. The script starts it in the background, waits
  until URL answers, runs the page's later snippets (a reader's second terminal), and at the
  end stops it with Ctrl+C's signal; it must then exit cleanly (0 or 130, no traceback).
  `make demo` itself is the docs tests' demo: tests/docs/conftest.py starts it from README's
  block and stops it the same way at the end, and every page's identical block waits for it.
  A served snippet that restarts the demo (`make demo RESET=1`, on the demo's port) runs on a
  copy of the demo's home and a port of its own (Make's `PORT` from the environment), so that
  the pages running beside it keep their demo.
- `<!-- stand-in: what -->`: it needs a system that is not here (a model server, a
  time-stamping authority); tests/docs/stand_ins.py starts a stand-in for the page and says
  what it changes in the snippets (an address, a file the reader is told to make).
- `<!-- extends: FILE -->` (YAML): a fragment the reader adds to the page's configuration FILE.
  The script merges it into FILE, stops the page's served gateway with Ctrl+C, serves FILE
  again with the page's `modelfence serve` line, and asks each of its models one row with the
  page's last key (tests/docs/extend.py).
- `<!-- not-run: reason -->`: it cannot run here; tests/docs/held.py checks what can be
  checked of it (that its commands parse, that the names it shares with files agree).

`mf_…` in a snippet is the key the page minted last (the script finds it in the page's output).
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
MARKER = re.compile(r"^<!--\s*(not-run|serves|stand-in|extends):\s*(.+?)\s*-->$")
KEY_PLACEHOLDER = "mf_…"
KEY_PATTERN = r"mf_[0-9a-f]\{16\}_[A-Za-z0-9_-]\{43\}"  # a minted key, as grep reads it
DEMO_PORT = 8000  # what `make demo` serves on: the docs tests' demo, on a free port
RESTART_PORT = -1  # the key of `ports` that gives a restarted demo a port of its own
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
    serves: str | None = None     # the URL that answers once it is up
    stand_in: str | None = None   # what the page's stand-in replaces
    extends: str | None = None    # the configuration file a YAML fragment is added to

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
        """A shell or Python snippet not marked `not-run`, or a YAML fragment that `extends`
        the page's configuration (other YAML and Cedar are validated)."""
        if self.not_run:
            return False
        return self.kind in {"shell", "python"} or (self.kind == "yaml" and bool(self.extends))

    @property
    def is_demo(self) -> bool:
        """`make demo` as README shows it: the demo the docs tests start (conftest.py)."""
        return bool(self.serves) and self.first_line.split("#")[0].split() == ["make", "demo"]

    @property
    def restarts_demo(self) -> bool:
        """Another served command on the demo's port: the demo started again (`RESET=1`)."""
        return (bool(self.serves) and not self.is_demo
                and f":{DEMO_PORT}/" in (self.serves or "")
                and self.first_line.startswith("make demo"))

    @property
    def first_line(self) -> str:
        """Its first command: how tests/docs/held.py names a held snippet."""
        return next(ln.strip() for ln in self.code.splitlines()
                    if ln.strip() and not ln.startswith(("#", ". .venv")))


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
        markers = _markers_before(lines, start)
        found.append(Snippet(page, start + 1, lang.lower(), "\n".join(body) + "\n",
                             markers.get("not-run"), markers.get("serves"),
                             markers.get("stand-in"), markers.get("extends")))
    return found


def _markers_before(lines: list[str], fence: int) -> dict[str, str]:
    """The `<!-- key: value -->` comments on the lines just before a fence."""
    markers: dict[str, str] = {}
    n = fence - 1
    while n >= 0 and not lines[n].strip():
        n -= 1
    while n >= 0 and (m := MARKER.match(lines[n].strip())):
        markers.setdefault(m.group(1), m.group(2))
        n -= 1
    return markers


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


# a documented port, where a snippet names one: an address, a `port:` key, `--port`, `PORT=`
PORT_IN_TEXT = re.compile(r"((?:127\.0\.0\.1|0\.0\.0\.0|localhost):|port: |--port |PORT=)"
                          r"(\d{4,5})\b")
PRELUDE = r"""set -euo pipefail
exec > >(tee -a {log})
__served=()
__serve_until() {{  # URL PID: wait until URL answers, or fail if PID ended first
  for _ in $(seq 1 1200); do
    if curl -fs -o /dev/null "$1"; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then echo "it stopped before $1 answered" >&2; return 1; fi
    sleep 0.1
  done
  echo "$1 did not answer within 120 s" >&2; return 1
}}
__await_demo() {{  # URL: the demo the docs tests started from README's `make demo` block
  for _ in $(seq 1 1200); do
    if curl -fs -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "the demo did not answer at $1 within 120 s" >&2; return 1
}}
__home_copy() {{  # FOLDER: a copy of $HOME/.modelfence as a stopped demo leaves it
  # the demo runs on: a file it replaces while cp reads the folder may vanish (reset removes
  # what the demo writes as it serves; what it keeps, the model and keys, does not change)
  mkdir -p "$1"; cp -a "$HOME/.modelfence" "$1/" 2>/dev/null || true
  test -d "$1/.modelfence/demo" || {{ echo "no demo home to copy" >&2; return 1; }}
  find "$1" \( -name '*-wal' -o -name '*-shm' -o -name '*.sock' -o -name '*.lock' \) -delete
}}
__stop_served() {{  # Ctrl+C to each background snippet; each must end cleanly
  local pid rc failed=0
  for pid in "${{__served[@]}}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
  for pid in "${{__served[@]}}"; do
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 130 ]; then
      echo "a served snippet exited $rc after Ctrl+C" >&2; failed=1
    fi
  done
  __served=()
  return "$failed"
}}
trap 'for pid in "${{__served[@]}}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done' EXIT
__last_key() {{  # the key the page minted last, from its output so far
  for _ in $(seq 1 50); do
    if k=$(grep -o '{key}' {log} | tail -1) && [ -n "$k" ]; then echo "$k"; return 0; fi
    sleep 0.1
  done
  echo "no key minted before a snippet that uses one" >&2; return 1
}}
"""


def map_ports(code: str, ports: dict[int, int]) -> str:
    """The documented ports of a snippet replaced by the free ones the test gave them."""
    return PORT_IN_TEXT.sub(
        lambda m: m.group(1) + str(ports.get(int(m.group(2)), m.group(2))), code)


def page_script(page_snippets: list[Snippet], folder: Path, ports: dict[int, int],
                substitutions: dict[str, str] | None = None, homes: Path | None = None) -> str:
    """One bash script running a page's runnable snippets in order, as a user pastes them.

    `ports` maps the ports the page documents (8000 and 8001 of the demo, those of a gateway
    or stand-in the page starts itself) to free ones; `substitutions` are a stand-in's text
    replacements. Nothing else in the snippets is changed, but `mf_…` (see the module's doc).
    A restarted demo's home is `homes`/N (a short path: the demo prints it), N its snippet's
    place on the page.
    """
    log = shlex.quote(str(folder / "output.log"))
    parts = [PRELUDE.format(log=log, key=KEY_PATTERN)]
    for n, snip in enumerate(page_snippets):
        code = map_ports(snip.code, ports)
        for old, new in (substitutions or {}).items():
            code = code.replace(old, new)
        parts.append(f"echo {shlex.quote('>>> ' + snip.where)} >&2")
        path = folder / f"snippet_{n}.{SUFFIX[snip.kind or 'shell']}"
        path.write_text(code)
        quoted = shlex.quote(str(path))
        if snip.extends:
            parts.append(_extend(snip, quoted, page_snippets[:n], folder / f"restart_{n}.sh",
                                 ports, substitutions or {}))
            continue
        if KEY_PLACEHOLDER in code:
            parts.append(f'__key=$(__last_key); __code=$(<{quoted}); '
                         f'printf "%s\\n" "${{__code//{KEY_PLACEHOLDER}/$__key}}" > {quoted}')
        run = f".venv/bin/python {quoted}" if snip.kind == "python" else f". {quoted}"
        if snip.is_demo:
            parts.append(f"__await_demo {shlex.quote(map_ports(snip.serves or '', ports))}")
        elif snip.restarts_demo:
            port = ports[RESTART_PORT]
            url = map_ports((snip.serves or "").replace(f":{DEMO_PORT}/", f":{port}/"), ports)
            home = shlex.quote(str((homes or folder) / str(n)))
            parts.append(f"__home_copy {home}")
            parts.append(f"set -m; ( export HOME={home} PORT={port}; {run} ) & __pid=$!; "
                         "set +m; __served+=(\"$__pid\")")
            parts.append(f"__serve_until {shlex.quote(url)} \"$__pid\"")
        elif snip.serves:
            url = map_ports(snip.serves, ports)
            parts.append(f"set -m; ( {run} ) & __pid=$!; set +m; __served+=(\"$__pid\")")
            parts.append(f"__serve_until {shlex.quote(url)} \"$__pid\"")
        else:
            parts.append(run)
    parts.append("__stop_served")
    return "\n".join(parts) + "\n"


SUFFIX = {"python": "py", "shell": "sh", "yaml": "yaml"}
HELPER = f"PYTHONPATH={shlex.quote(str(ROOT))} .venv/bin/python -m tests.docs.extend"


def _extend(snip: Snippet, fragment: str, before: list[Snippet], restart: Path,
            ports: dict[int, int], substitutions: dict[str, str]) -> str:
    """What a reader does with a fragment that extends the page's configuration: add it to
    the file, stop the gateway (Ctrl+C), serve the file again as the page did, ask it."""
    served = [s for s in before if s.serves and not s.is_demo and not s.restarts_demo]
    assert served, f"{snip.where}: extends {snip.extends}, but no gateway is served before it"
    last = served[-1]
    code = map_ports(last.code, ports)
    for old, new in substitutions.items():
        code = code.replace(old, new)
    keep = [ln for ln in code.splitlines()
            if ln.strip() in {ACTIVATE} or ln.strip().startswith(("cd ", "modelfence serve"))]
    assert any("modelfence serve" in ln for ln in keep), f"{last.where} has no `modelfence serve`"
    restart.write_text("\n".join(keep) + "\n")
    url = map_ports(last.serves or "", ports)
    base = url.split("/v2/")[0].split("/admin/")[0]
    file = shlex.quote(snip.extends or "")
    return "\n".join([
        f"{HELPER} merge {file} {fragment}",
        "__stop_served",
        f"set -m; ( . {shlex.quote(str(restart))} ) & __pid=$!; set +m; __served+=(\"$__pid\")",
        f"__serve_until {shlex.quote(url)} \"$__pid\"",
        f"{HELPER} ask {shlex.quote(base)} {file} \"$(__last_key)\"",
    ])
